"""tft2v.webui and `tft2v serve`: the app's form, the generate handler on a real tiny model folder."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from webui_fixtures import DEFAULTS, SIZE, write_source_image, write_source_video, write_tiny_model

from tft2v.cli import main
from tft2v.errors import TFT2VError
from tft2v.pipeline import TFT2VPipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return TFT2VPipeline.from_pretrained(write_tiny_model(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def sketch_pipe(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("model") / "sketch", conditions=("sketch",))
    return TFT2VPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def upload_folder(tmp_path_factory):
    """A model with the conditions the UI builds from an image or a video to inpaint."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "uploads",
                            conditions=("masked", "local_image", "single_sketch"))


@pytest.fixture(scope="module")
def upload_pipe(upload_folder):
    return TFT2VPipeline.from_pretrained(upload_folder)


def decode(path) -> np.ndarray:
    """mp4 -> uint8 (F, H, W, 3), asserting H.264 (what browsers play)."""
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def params(**overrides):
    from tft2v.webui import GenerateParams

    base = dict(prompt="a red circle moving left", negative_prompt="", num_inference_steps=2,
                guidance_scale=7.5, seed=3, num_frames=4, scheduler="ddim")
    return GenerateParams(**{**base, **overrides})


def by_id(demo) -> dict:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def test_build_app_form_defaults_from_model_folder_and_queue(pipe, tmp_path):
    import gradio as gr

    from tft2v.webui import MAX_QUEUE, build_app

    demo = build_app(pipe, out_dir=tmp_path)
    parts = by_id(demo)
    for name in ("prompt", "negative-prompt", "steps", "guidance", "frames", "seed", "scheduler", "generate"):
        assert name in parts, name
    assert isinstance(parts["result"], gr.Video)
    assert parts["negative-prompt"].value == DEFAULTS["negative_prompt"]
    assert parts["steps"].value == DEFAULTS["num_inference_steps"]
    assert parts["frames"].value == DEFAULTS["num_frames"]
    assert parts["guidance"].value == DEFAULTS["guidance_scale"]
    assert parts["scheduler"].choices == [("ddim", "ddim"), ("dpmpp", "dpmpp")]
    assert not any(k.startswith("condition-") for k in parts)  # this model takes no conditions
    assert demo._queue.max_size == MAX_QUEUE and demo._queue.default_concurrency_limit == 1


def test_condition_uploads_follow_the_model(sketch_pipe, tmp_path):
    from tft2v.webui import build_app, model_conditions

    assert model_conditions(sketch_pipe) == ("sketch",)
    parts = by_id(build_app(sketch_pipe, out_dir=tmp_path))
    assert "condition-sketch" in parts and "condition-depth" not in parts


def test_image_and_masked_uploads_follow_the_model(upload_pipe, tmp_path):
    import gradio as gr

    from tft2v.webui import build_app, model_conditions

    assert model_conditions(upload_pipe) == ("masked", "local_image", "single_sketch")
    parts = by_id(build_app(upload_pipe, out_dir=tmp_path))
    assert isinstance(parts["condition-masked"], gr.Video)
    for name in ("local_image", "single_sketch"):
        assert isinstance(parts[f"condition-{name}"], gr.Image) and parts[f"condition-{name}"].type == "filepath"
    assert "condition-sketch" not in parts


def pipe_video(pipe, tmp_path, **condition_kwargs) -> np.ndarray:
    """The request of ``params()`` run straight through the pipeline, written and decoded like the UI's."""
    from tft2v.video_export import export_video

    frames = pipe("a red circle moving left", negative_prompt="", num_frames=4, num_inference_steps=2,
                  guidance_scale=7.5, generator=torch.Generator().manual_seed(3), output_type="uint8",
                  **condition_kwargs)
    return decode(export_video(frames[0], tmp_path / "direct.mp4", fps=DEFAULTS["fps"]))


def cli_video(folder, tmp_path, capsys, *flags) -> np.ndarray:
    """The request of ``params()`` run through ``tft2v generate`` on the same model folder."""
    out = tmp_path / "cli.mp4"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(folder), "a red circle moving left", "--negative-prompt", "", "--steps", "2",
              "--guidance", "7.5", "--seed", "3", "--frames", "4", "--scheduler", "ddim", *flags, "--out", str(out)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    return decode(out)


def test_local_image_upload_equals_generate_local_image(upload_pipe, upload_folder, tmp_path, capsys):
    from tft2v.data.image_io import read_image
    from tft2v.webui import generate_video

    image = write_source_image(tmp_path / "first.png")
    ui = decode(generate_video(upload_pipe, params(condition_images={"local_image": str(image)}), tmp_path))
    np.testing.assert_array_equal(ui, cli_video(upload_folder, tmp_path, capsys, "--local-image", str(image)))
    # VGen's local_image: the first frame in [0, 1] held over the frames, passed as a ready condition.
    pixels = torch.from_numpy(read_image(image, size=(SIZE, SIZE))[0]).permute(2, 0, 1).float() / 255  # (3, H, W)
    direct = pipe_video(upload_pipe, tmp_path, conditions={"local_image": pixels[None, :, None].expand(-1, -1, 4, -1, -1)})
    np.testing.assert_array_equal(ui, direct)
    plain = decode(generate_video(upload_pipe, params(), tmp_path))
    assert np.abs(ui.astype(int) - plain.astype(int)).mean() > 1


def test_single_sketch_upload_is_the_image_sketch_on_every_frame(upload_pipe, tmp_path):
    from tft2v.data.conditions import sketch
    from tft2v.data.image_io import read_image
    from tft2v.webui import generate_video

    image = write_source_image(tmp_path / "sketch.png")
    ui = decode(generate_video(upload_pipe, params(condition_images={"single_sketch": str(image)}), tmp_path))
    pixels = torch.from_numpy(read_image(image, size=(SIZE, SIZE))[0]).permute(2, 0, 1).float() / 127.5 - 1
    edges = sketch(pixels[None, :, None])  # (1, 1, 1, H, W)
    np.testing.assert_array_equal(ui, pipe_video(upload_pipe, tmp_path,
                                                 conditions={"single_sketch": edges.expand(-1, -1, 4, -1, -1)}))
    moved = write_source_image(tmp_path / "moved.png", left=10)
    other = decode(generate_video(upload_pipe, params(condition_images={"single_sketch": str(moved)}), tmp_path))
    assert np.abs(ui.astype(int) - other.astype(int)).mean() > 1


def test_masked_upload_equals_generate_masked(upload_pipe, upload_folder, tmp_path, capsys):
    from tft2v.webui import generate_video

    source = write_source_video(tmp_path / "inpaint.mp4")
    ui = decode(generate_video(upload_pipe, params(condition_videos={"masked": str(source)}), tmp_path))
    # generate samples condition videos at --condition-fps, the UI at the model's fps
    flags = ("--masked", str(source), "--condition-fps", str(DEFAULTS["fps"]))
    np.testing.assert_array_equal(ui, cli_video(upload_folder, tmp_path, capsys, *flags))
    plain = decode(generate_video(upload_pipe, params(), tmp_path))
    assert np.abs(ui.astype(int) - plain.astype(int)).mean() > 1


def test_handler_routes_image_uploads_and_reports_bad_ones_in_one_line(upload_pipe, pipe, tmp_path):
    import gradio as gr

    from tft2v.webui import generate_video, make_handler, model_conditions

    handler = make_handler(upload_pipe, tmp_path, model_conditions(upload_pipe))  # masked, local_image, single_sketch
    image = str(write_source_image(tmp_path / "ok.png"))
    path, info = handler("a red circle", "", 2, 7.5, 4, 0, "ddim", None, image, image)
    assert decode(path).shape == (4, SIZE, SIZE, 3) and "local_image, single_sketch from upload" in info
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    video = str(write_source_video(tmp_path / "clip.mp4"))
    for uploads, message in [((None, str(bad), None), "cannot use notes.png as the local_image image: "),
                             ((None, None, video), "cannot use clip.mp4 as the single_sketch image: file holds")]:
        with pytest.raises(gr.Error, match=message) as err:
            handler("a red circle", "", 2, 7.5, 4, 0, "ddim", *uploads)
        assert "\n" not in err.value.message
    with pytest.raises(TFT2VError, match="not trained with the 'local_image' condition"):
        generate_video(pipe, params(condition_images={"local_image": image}), tmp_path)


def test_generate_writes_playable_mp4_with_progress(pipe, tmp_path):
    from tft2v.webui import generate_video

    steps = []
    path = generate_video(pipe, params(), tmp_path, progress=lambda i, n: steps.append((i, n)))
    assert path.suffix == ".mp4" and path.parent == tmp_path
    frames = decode(path)
    assert frames.shape == (4, SIZE, SIZE, 3)
    assert steps == [(1, 2), (2, 2)]


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp"])
def test_same_seed_same_video_other_seed_differs(pipe, tmp_path, scheduler):
    from tft2v.webui import generate_video

    a = decode(generate_video(pipe, params(scheduler=scheduler), tmp_path))
    b = decode(generate_video(pipe, params(scheduler=scheduler), tmp_path))
    c = decode(generate_video(pipe, params(scheduler=scheduler, seed=4), tmp_path))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_sketch_condition_video_changes_the_result(sketch_pipe, tmp_path):
    from tft2v.webui import generate_video

    source = write_source_video(tmp_path / "source.mp4")
    plain = decode(generate_video(sketch_pipe, params(), tmp_path))
    guided = decode(generate_video(sketch_pipe, params(condition_videos={"sketch": str(source)}), tmp_path))
    assert guided.shape == plain.shape == (4, SIZE, SIZE, 3)
    assert np.abs(guided.astype(int) - plain.astype(int)).mean() > 1


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"scheduler": "euler"}, "unknown scheduler"),
    ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ({"condition_videos": {"sketch": "x.mp4"}}, "not trained with the 'sketch' condition"),
])
def test_bad_requests_are_one_line_errors(pipe, tmp_path, overrides, message):
    from tft2v.webui import generate_video

    if "condition_videos" in overrides:  # a real file, so only the model's lack of the condition is wrong
        overrides = {"condition_videos": {"sketch": str(write_source_video(tmp_path / "x.mp4"))}}
    with pytest.raises(TFT2VError, match=message) as err:
        generate_video(pipe, params(**overrides), tmp_path)
    assert "\n" not in str(err.value)


def test_unreadable_condition_video_is_a_one_line_error(sketch_pipe, tmp_path):
    from tft2v.webui import generate_video

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(TFT2VError, match="cannot use notes.mp4 as a condition video") as err:
        generate_video(sketch_pipe, params(condition_videos={"sketch": str(bad)}), tmp_path)
    assert "\n" not in str(err.value)


def test_handler_turns_user_errors_into_gradio_messages(pipe, tmp_path):
    import gradio as gr

    from tft2v.webui import make_handler

    handler = make_handler(pipe, tmp_path, conditions=())
    path, info = handler("a blue square", "", 2, 7.5, 4, 1, "dpmpp")
    assert decode(path).shape == (4, SIZE, SIZE, 3)
    assert info.startswith("seed 1 · 4 frames · 2 dpmpp steps · guidance 7.5 · ")
    with pytest.raises(gr.Error, match="prompt is empty"):
        handler("", "", 2, 7.5, 4, 1, "ddim")


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}/missing"], "does not exist"),
    (["--model", "{tmp}"], "no model_index.json"),
    (["--model", "{model}", "--share", "on"], "share links are not supported"),
    (["--model", "{model}", "--device", "tpu9"], "unknown --device"),
    (["--model", "{model}", "--depth-model", "{tmp}/depth.pt"], "is not a file"),
    (["--model", "{model}", "--port", "0"], "--port"),
    (["--model", "{model}/unet"], "no model_index.json"),
    (["--model", "{model}", "--bogus"], "No such option: --bogus"),
])
def test_serve_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    model = tmp_path / "model"
    if any("{model}" in a for a in args):
        write_tiny_model(model)
    argv = ["serve", *(a.format(tmp=tmp_path, model=model) for a in args)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_distilled_model_offers_its_few_step_sampler_first(tmp_path):
    """A few-step folder (LCMScheduler, 4 steps, guidance 1): the form defaults to lcm at 4 steps, generates
    with it, and lcm stays on offer after another sampler was used."""
    from tft2v.sampling import build_scheduler
    from tft2v.webui import build_app, generate_video

    source = TFT2VPipeline.from_pretrained(write_tiny_model(tmp_path / "base"))
    few = TFT2VPipeline(source.unet, build_scheduler("lcm", source.noise_schedule, original_inference_steps=10),
                        source.encoder, source.autoencoder,
                        defaults={**DEFAULTS, "num_inference_steps": 4, "guidance_scale": 1.0})
    pipe = TFT2VPipeline.from_pretrained(few.save_pretrained(tmp_path / "lcm"))
    parts = by_id(build_app(pipe, out_dir=tmp_path))
    assert parts["scheduler"].choices[0] == ("lcm", "lcm") and parts["scheduler"].value == "lcm"
    assert parts["steps"].value == 4 and parts["guidance"].value == 1.0
    first = decode(generate_video(pipe, params(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0), tmp_path))
    generate_video(pipe, params(scheduler="ddim"), tmp_path)
    again = decode(generate_video(pipe, params(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0), tmp_path))
    assert np.array_equal(first, again)  # back on lcm with its own grid (original_inference_steps 10)
    assert pipe.scheduler.config.original_inference_steps == 10
    with pytest.raises(TFT2VError, match="unknown scheduler 'lcm'"):
        generate_video(source, params(scheduler="lcm"), tmp_path)
