"""TFT2VPipeline on tiny random models: folder round-trip, determinism, schedulers, CFG batching,
memory switches, conditions, image tokens, output types, errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from pipeline_fixtures import seeded, toy_model_folder, toy_pipeline

from tft2v import export_video
from tft2v.errors import TFT2VError
from tft2v.pipeline import VGEN_NEGATIVE_PROMPT, TFT2VPipeline


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline()


def test_folder_round_trip_and_playable_mp4(tmp_path, pipe):
    folder = pipe.save_pretrained(tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "TFT2VPipeline"
    assert index["encoder"] == ["tft2v.encoders.toy", "ToyEncoder"]
    assert index["tft2v"]["negative_prompt"] == VGEN_NEGATIVE_PROMPT and index["tft2v"]["num_frames"] == 4
    loaded = TFT2VPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    a = pipe("a red circle", generator=seeded(0), output_type="uint8")
    b = loaded("a red circle", generator=seeded(0), output_type="uint8")
    assert a.shape == (1, 4, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    path = export_video(b[0], tmp_path / "out.mp4", fps=loaded.defaults["fps"])
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


def test_same_seed_same_video_different_seed_differs(pipe):
    a = pipe("a blue square", generator=seeded(3))
    b = pipe("a blue square", generator=seeded(3))
    c = pipe("a blue square", generator=seeded(4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_prompt_and_negative_prompt_reach_the_model(pipe):
    a = pipe("a red circle", generator=seeded(0))
    assert np.abs(a - pipe("a green triangle", generator=seeded(0))).mean() > 1e-4
    assert np.abs(a - pipe("a red circle", negative_prompt="", generator=seeded(0))).mean() > 1e-4


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "EulerDiscreteScheduler"])
def test_schedulers_run_and_keep_the_schedule(name):
    before = toy_pipeline().noise_schedule
    p = toy_pipeline().set_scheduler(name)
    assert p.scheduler.config.prediction_type == "v_prediction"
    assert p.scheduler.config.rescale_betas_zero_snr
    assert p.noise_schedule == before and before.zero_terminal_snr and before.prediction_type == "v_prediction"
    out = p("a red circle", generator=seeded(0), output_type="pt")
    assert out.shape == (1, 3, 4, 16, 16) and torch.isfinite(out).all()


def test_ddim_and_dpmpp_differ(pipe):
    dpm = toy_pipeline().set_scheduler("dpmpp")
    assert np.abs(pipe("a red circle", generator=seeded(0)) - dpm("a red circle", generator=seeded(0))).mean() > 1e-4


def test_unknown_scheduler_is_an_error():
    with pytest.raises(TFT2VError, match="unknown scheduler"):
        toy_pipeline().set_scheduler("nope")


def test_cfg_batching_equals_two_separate_forwards():
    p = toy_pipeline()
    batched = p(["a red circle", "a cyan square"], generator=seeded(1), output_type="pt")
    p.enable_unet_batch_chunking(1)  # cond and uncond (and the two prompts) as separate forwards
    separate = p(["a red circle", "a cyan square"], generator=seeded(1), output_type="pt")
    torch.testing.assert_close(batched, separate, atol=1e-4, rtol=0)  # float summation order differs with batch size; guidance 9 amplifies it


def test_per_video_generators_make_videos_independent_of_the_batch(pipe):
    both = pipe("a red circle", num_videos_per_prompt=2, generator=[seeded(5), seeded(6)], output_type="pt")
    alone = pipe("a red circle", generator=seeded(6), output_type="pt")
    assert both.shape[0] == 2
    torch.testing.assert_close(both[1:], alone, atol=1e-4, rtol=0)  # float summation order differs with batch size; guidance 9 amplifies it


def test_output_types_and_callback(pipe):
    steps = []
    pt = pipe("a red circle", generator=seeded(0), output_type="pt", callback=lambda i, n, x: steps.append((i, n)))
    assert steps == [(0, 3), (1, 3), (2, 3)]
    np_frames = pipe("a red circle", generator=seeded(0), output_type="np")
    assert pt.shape == (1, 3, 4, 16, 16) and pt.min() >= -1 and pt.max() <= 1
    np.testing.assert_allclose(np_frames, ((pt + 1) / 2).permute(0, 2, 3, 4, 1).numpy(), atol=1e-6)


def test_image_tokens_change_the_video(pipe):
    image = torch.zeros(3, 16, 16) - 1
    image[0, 4:12, 4:12] = 1  # a red square on black
    a = pipe("a red square", generator=seeded(0))
    b = pipe("a red square", generator=seeded(0), image=image)
    assert np.abs(a - b).mean() > 1e-4


def test_kl_autoencoder_bf16_and_cpu_offload(tmp_path):
    p = toy_pipeline(kl=True)
    ref = p("a red circle", generator=seeded(0), output_type="pt")
    assert ref.shape == (1, 3, 4, 16, 16)
    p.enable_model_cpu_offload("cpu")
    torch.testing.assert_close(p("a red circle", generator=seeded(0), output_type="pt"), ref)
    p.disable_model_cpu_offload()
    p.vae_decode_chunk_size = 1
    torch.testing.assert_close(p("a red circle", generator=seeded(0), output_type="pt"), ref, atol=1e-5, rtol=0)
    p.to(torch.bfloat16)
    assert p.dtype == torch.bfloat16
    half = p("a red circle", generator=seeded(0), output_type="pt")
    assert torch.isfinite(half).all() and (half - ref).abs().mean() < 0.1
    loaded = TFT2VPipeline.from_pretrained(toy_model_folder(tmp_path / "kl", kl=True), torch_dtype=torch.bfloat16)
    assert loaded.unet.dtype == torch.bfloat16 and loaded.autoencoder.vae.dtype == torch.bfloat16


def test_compositional_conditions_from_raw_video():
    # Pixel space: the condition encoders pool to condition_pixel_size/8, which must equal the 16×16 latent.
    p = toy_pipeline(conditions=("sketch", "local_image"), condition_channels=4, condition_pixel_size=(128, 128))
    video = torch.linspace(-1, 1, 16).view(1, 1, 1, 1, 16).expand(1, 3, 4, 32, 16).clone()  # resized to 16×16
    base = p("a red circle", generator=seeded(0))
    sketched = p("a red circle", generator=seeded(0), condition_videos={"sketch": video})
    assert np.abs(base - sketched).mean() > 1e-4
    ready = p("a red circle", generator=seeded(0), conditions={"local_image": (video[..., :16, :] + 1) / 2})
    assert np.abs(base - ready).mean() > 1e-4
    with pytest.raises(TFT2VError, match="not trained with the 'depth' condition"):
        p("a red circle", condition_videos={"depth": video})
    with pytest.raises(TFT2VError, match="has 2 frames; expected 4"):
        p("a red circle", condition_videos={"sketch": video[:, :, :2]})
    with pytest.raises(TFT2VError, match="must be \\(B, 1, F=4"):
        p("a red circle", conditions={"sketch": torch.zeros(1, 2, 4, 16, 16)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"height": 15}, "height 15 must be a multiple of 2"),
        ({"width": 0}, "width must be a positive integer"),
        ({"height": -16}, "height must be a positive integer, got -16"),
        ({"num_frames": 0}, "num_frames must be a positive integer"),
        ({"num_frames": 2.0}, "num_frames must be a positive integer, got 2.0"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer, got 0"),
        ({"num_inference_steps": -1}, "num_inference_steps"),
        ({"num_inference_steps": 1001}, "num_inference_steps 1001 exceeds the scheduler's 1000 training timesteps"),
        ({"guidance_scale": -0.5}, "guidance_scale must be a finite number >= 0, got -0.5"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"decode_chunk_size": 0}, "decode_chunk_size must be a positive integer"),
        ({"output_type": "pil"}, "output_type"),
        ({"negative_prompt": ["a", "b"]}, "2 negative prompts for 1 prompts"),
        ({"generator": [seeded(0), seeded(1)]}, "2 generators for 1 videos"),
        ({"latents": torch.zeros(1, 3, 4, 8, 8)}, "latents must have shape"),
        ({"image": torch.zeros(16, 16)}, "image must be"),
        ({"conditions": {"sketch": torch.zeros(1, 1, 4, 16, 16)}}, "not trained with the 'sketch'"),
        ({"conditions": {"edges": torch.zeros(1, 1, 4, 16, 16)}}, "unknown condition 'edges'"),
    ],
)
def test_bad_call_arguments(pipe, kwargs, message):
    with pytest.raises(TFT2VError, match=message.replace("(", "\\(")):
        pipe("a red circle", **kwargs)


def test_none_means_the_model_default_and_numpy_integers_pass(pipe):
    steps = []
    out = pipe("a red circle", num_frames=None, num_inference_steps=None, guidance_scale=None, height=None,
               callback=lambda i, n, _x: steps.append(n))
    assert out.shape == (1, 4, 16, 16, 3) and steps == [3, 3, 3]  # TINY_DEFAULTS: 4 frames of 16x16, 3 steps
    out = pipe("a red circle", num_frames=np.int64(2), num_inference_steps=np.int32(1), guidance_scale=np.float32(0))
    assert out.shape == (1, 2, 16, 16, 3)


def test_bad_prompt_and_unknown_default(pipe):
    with pytest.raises(TFT2VError, match="prompt must be"):
        pipe([])
    with pytest.raises(TFT2VError, match="unknown pipeline default"):
        TFT2VPipeline(pipe.unet, pipe.scheduler, pipe.encoder, pipe.autoencoder, defaults={"frames": 3})


def test_missing_component_and_mismatched_encoder(tmp_path, pipe):
    import shutil

    from tft2v.encoders import build_encoder

    folder = pipe.save_pretrained(tmp_path / "m")
    wrong = build_encoder("toy", text_dim=24, image_dim=32)
    with pytest.raises(TFT2VError, match="gives 24-d text tokens but the UNet expects context_dim 32"):
        TFT2VPipeline.from_pretrained(folder, encoder=wrong)
    shutil.rmtree(folder / "encoder")
    with pytest.raises(TFT2VError, match="missing component 'encoder'"):
        TFT2VPipeline.from_pretrained(folder)
    p = TFT2VPipeline.from_pretrained(folder, encoder=pipe.encoder)  # a supplied component fills the gap
    assert p.encoder is pipe.encoder
