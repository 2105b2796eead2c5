"""`tft2v refine` and TFT2VRefinePipeline end to end on a tiny refinement folder written by the test (the
shared vectors' randomized SR600 UNet, a tiny random VAE, the toy encoder), plus the bad inputs."""

import av
import numpy as np
import pytest
import torch

from cli_run import run
from media_fixtures import write_video
from tests._tiny import shared_dir, tiny_kl_autoencoder
from tft2v.errors import TFT2VError

H, W = 20, 64  # pixels; the tiny VAE's factor 2 gives 10 x 32 latents (10 = 8k + 2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    tiny_kl_autoencoder().save_pretrained(root / "vae")
    out = root / "sr"
    with pytest.raises(SystemExit) as exit_info:
        from tft2v.cli import main

        main(["convert", "vgen", str(shared_dir() / "vectors" / "sr600_tiny.safetensors"), str(out), "--head-dim", "16",
              "--toy-encoder", "--vae", str(root / "vae"), "--resolution", f"{W}x{H}"])
    assert exit_info.value.code in (0, None)
    return out


def clip(path, frames: int):
    rng = np.random.default_rng(0)
    return write_video(path, rng.integers(0, 255, (frames, 16, 32, 3), dtype=np.uint8), fps=8)


def frames_of(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_refine_cli_doubles_a_16_frame_clip_and_writes_the_refined_video(folder, tmp_path, capsys):
    src = clip(tmp_path / "in.mp4", 16)
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["refine", str(src), "--model", str(folder), "--prompt", "a red circle", "--out", str(out),
                             "--steps", "3"], capsys)
    assert code == 0, err
    frames = frames_of(out)
    assert len(frames) == 16 and frames[0].shape == (H, W, 3)
    again = tmp_path / "again.mp4"
    assert run(["refine", str(src), "--model", str(folder), "--prompt", "a red circle", "--out", str(again),
                "--steps", "3"], capsys)[0] == 0
    assert all(np.array_equal(a, b) for a, b in zip(frames, frames_of(again)))  # seeded


def test_pipeline_strength_and_determinism(folder):
    from tft2v.refine_pipeline import TFT2VRefinePipeline, strength_to_t

    pipe = TFT2VRefinePipeline.from_pretrained(folder)
    video = torch.rand(1, 3, 32, 16, 32) * 2 - 1
    kw = dict(num_inference_steps=3, output_type="pt")
    a = pipe(video, "a cat", generator=torch.Generator().manual_seed(1), **kw)
    b = pipe(video, "a cat", generator=torch.Generator().manual_seed(1), **kw)
    c = pipe(video, "a cat", strength=0.3, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (1, 3, 32, H, W) and torch.equal(a, b) and not torch.equal(a, c)
    assert strength_to_t(0.7, 30) == 699 and strength_to_t(1.0, 30) == 998
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(TFT2VError, match="strength must be in"):
            pipe(video, "a cat", strength=bad, **kw)
    with pytest.raises(TFT2VError, match="size 24x64 does not fit this refiner"):
        pipe(video, "a cat", height=24, **kw)


def test_refine_bad_inputs_are_one_line_errors(folder, tmp_path, capsys):
    base = ["--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--steps", "2"]
    cases = [
        (tmp_path / "missing.mp4", "not found"),
        (clip(tmp_path / "short.mp4", 5), "has 5 frames; this refiner takes 32 (or 16, doubled)"),
    ]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    cases.append((junk, "cannot be decoded"))
    for path, words in cases:
        code, _, err = run(["refine", str(path), *base], capsys)
        assert code == 2 and words in err and "Traceback" not in err, err
    code, _, err = run(["refine", str(clip(tmp_path / "ok.mp4", 16)), *base, "--strength", "1.5"], capsys)
    assert code == 2 and "strength must be in (0, 1]" in err


def test_generate_with_refine_writes_both_videos(folder, tmp_path, capsys):
    from pipeline_fixtures import toy_model_folder

    base = toy_model_folder(tmp_path / "base")
    out = tmp_path / "clip.mp4"
    code, stdout, err = run(["generate", "a red circle", "--model", str(base), "--frames", "16", "--steps", "2",
                             "--out", str(out), "--refine", str(folder), "--refine-steps", "2"], capsys)
    assert code == 0, err
    refined = tmp_path / "clip_refined.mp4"
    assert out.is_file() and refined.is_file() and "(refined)" in stdout
    assert len(frames_of(out)) == 16 and len(frames_of(refined)) == 16 and frames_of(refined)[0].shape == (H, W, 3)
    code, _, err = run(["generate", "a red circle", "--model", str(base), "--frames", "5", "--steps", "2",
                        "--out", str(tmp_path / "x.mp4"), "--refine", str(folder)], capsys)
    assert code == 2 and "--frames: the video has 5 frames; this refiner takes 32 (or 16, doubled)" in err
    code, _, err = run(["generate", "a red circle", "--model", str(base), "--out", str(tmp_path / "y.mp4"),
                        "--refine", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "is not a model folder" in err


def test_web_ui_offers_refinement_when_a_refiner_is_served(folder, tmp_path):
    from pipeline_fixtures import toy_pipeline

    from tft2v.refine_pipeline import TFT2VRefinePipeline
    from tft2v.webui import build_app, make_handler

    pipe, refiner = toy_pipeline(), TFT2VRefinePipeline.from_pretrained(folder)
    ids = {b.elem_id for b in build_app(pipe, out_dir=tmp_path, refiner=refiner).blocks.values()
           if getattr(b, "elem_id", None)}
    assert "refine" in ids
    assert "refine" not in {b.elem_id for b in build_app(pipe, out_dir=tmp_path).blocks.values()
                            if getattr(b, "elem_id", None)}
    handler = make_handler(pipe, tmp_path, (), refiner=refiner)
    path, info = handler("a red circle", "", 2, 7.5, 16, 0, "ddim", True)
    frames = frames_of(path)
    assert len(frames) == 16 and frames[0].shape == (H, W, 3) and "refined" in info
    path, info = handler("a red circle", "", 2, 7.5, 16, 0, "ddim", False)
    assert frames_of(path)[0].shape != (H, W, 3) and "refined" not in info
    import gradio as gr

    with pytest.raises(gr.Error, match="the requested video has 5 frames; this refiner takes 32"):
        handler("a red circle", "", 2, 7.5, 5, 0, "ddim", True)


def test_refine_with_tiling_chunking_and_offload(folder):
    """The memory switches a 1280x720 x 32 refinement needs run and keep the result: sequential CFG is the
    same computation, tiled VAE stays close (its seams are blended), offload puts everything back on the CPU."""
    from tft2v.refine_pipeline import TFT2VRefinePipeline

    pipe = TFT2VRefinePipeline.from_pretrained(folder)
    video = torch.rand(1, 3, 32, 16, 32) * 2 - 1
    kw = dict(num_inference_steps=2, output_type="pt")
    plain = pipe(video, "a cat", generator=torch.Generator().manual_seed(3), **kw)
    pipe.enable_unet_batch_chunking(1)
    chunked = pipe(video, "a cat", generator=torch.Generator().manual_seed(3), **kw)
    assert (chunked - plain).abs().max() <= 1e-4
    pipe.enable_vae_tiling()
    pipe.enable_model_cpu_offload("cpu")
    assert pipe.autoencoder.vae.use_tiling
    tiled = pipe(video, "a cat", generator=torch.Generator().manual_seed(3), **kw)
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    assert {str(p.device) for m in pipe._modules() for p in m.parameters()} == {"cpu"}
