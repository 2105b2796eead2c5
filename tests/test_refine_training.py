"""Training a refinement stage (``recipe.refine``): the schedule, the degraded-input step, its config errors,
and whole runs from clips and PNGs on disk — from a T2V model folder (kill -9, exact resume, then `tft2v
refine` on the exported folder), through LoRA, and fine-tuning a converted SR600 refiner.

Videos are ``(B, 3, F, H, W)``; latents ``(B, C, F, h, w)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tft2v.autoencoder import build_autoencoder
from tft2v.config import RecipeConfig, RefineConfig, load_config
from tft2v.data.mixing import collate
from tft2v.data.toy import ToyWorld, generate
from tft2v.diffusion import ScheduleConfig, build_training_scheduler
from tft2v.encoders import build_encoder
from tft2v.errors import ConfigError, TFT2VError
from tft2v.refine_sampler import logsnr_interp_table
from tft2v.train import refine_step
from tft2v.train.recipe import Recipe, sample_generators
from train_fixtures import kill_after_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
LOGSNR = ScheduleConfig(beta_schedule="logsnr_cosine_interp", zero_terminal_snr=False)


def test_logsnr_training_schedule_is_the_refine_samplers_table():
    scheduler = build_training_scheduler(LOGSNR)
    sigmas, alphas = logsnr_interp_table()
    assert torch.allclose(scheduler.alphas_cumprod.sqrt(), alphas, atol=2e-6)
    assert scheduler.config.beta_schedule == "logsnr_cosine_interp"
    with pytest.raises(ConfigError, match="set schedule.zero_terminal_snr: false"):
        ScheduleConfig(beta_schedule="logsnr_cosine_interp")


def test_shifted_inputs_start_degraded_end_clean_and_keep_the_target_bounded():
    a = build_training_scheduler(LOGSNR).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    z, z_low, noise = (torch.randn(3, 4, 2, 4, 4, generator=g) for _ in range(3))
    t_end = 700
    t = torch.tensor([t_end - 1, 300, 0])
    x_t, effective = refine_step.shifted_inputs(a, z, z_low, noise, t, t_end)
    alpha, sigma = a[t].sqrt().view(-1, 1, 1, 1, 1), (1 - a[t]).sqrt().view(-1, 1, 1, 1, 1)
    # The top of the range is the SDEdit start: the degraded latent under noise.
    assert torch.allclose(x_t[0], alpha[0] * z_low[0] + sigma[0] * noise[0], atol=1e-5)
    # Any t: x_t = α z + σ ε', so the target (from z and ε') is the clean latent's.
    assert torch.allclose(x_t, alpha * z + sigma * effective, atol=1e-4)
    # ε' − ε ≤ α σ / σ_max² · |residual|: bounded as σ → 0 (a plain degraded input would divide by σ).
    bound = alpha * sigma / (1 - a[t_end - 1]) * (z_low - z).abs()
    assert ((effective - noise).abs() <= bound + 1e-5).all()
    assert (effective[2] - noise[2]).abs().max() < 0.01


def test_degrade_resizes_down_and_back():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 3, 16, 24, generator=g) * 2 - 1
    low = refine_step.degrade(pixels, (8, 12))
    assert low.shape == pixels.shape and low.abs().max() <= 1
    assert (pixels - low).abs().mean() > 0.1  # detail is gone ...
    flat = torch.full_like(pixels, 0.25)
    assert torch.allclose(refine_step.degrade(flat, (8, 12)), flat, atol=1e-6)  # ... flat colour is not
    refine = RefineConfig(enabled=True, base_height=256, base_width=448)
    assert refine_step.base_size(refine, 720, 1280, 720, 1280) == (256, 448)
    assert refine_step.base_size(refine, 720, 1280, 1280, 720) == (455, 252)  # a portrait bucket: same factors


@pytest.fixture(scope="module")
def batch():
    world = ToyWorld(size=16, frames=4, size_range=(4, 8))
    return collate([generate("videos", 3, seed=2, world=world).sample(i) for i in range(3)])


def refine_recipe(**refine):
    cfg = RecipeConfig(image_tokens_on_videos=False, text_dropout=0.0,
                       refine=RefineConfig(enabled=True, base_height=8, base_width=8, **refine))
    encoder = build_encoder("toy", text_dim=16, image_dim=32, max_length=4)
    return Recipe(cfg, LOGSNR, encoder, build_autoencoder("none"), build_training_scheduler(LOGSNR), data_size=(16, 16))


def test_refine_step_draws_t_below_strength_and_targets_the_clean_clip(batch):
    recipe = refine_recipe(strength=0.3)
    t_all = []
    for seed in range(8):
        inp = recipe.inputs(batch, "video", sample_generators(seed, 0, "video", 0, 3), "cpu")
        t_all += inp["t"].tolist()
        again = recipe.inputs(batch, "video", sample_generators(seed, 0, "video", 0, 3), "cpu")
        assert torch.equal(inp["x_t"], again["x_t"]) and torch.equal(inp["target"], again["target"])
    assert max(t_all) < 300 and min(t_all) < 150
    # v target of the clean clip: x0 = α x_t − σ v recovers the full-resolution pixels (identity autoencoder).
    a = recipe.noise_scheduler.alphas_cumprod[inp["t"]].view(-1, 1, 1, 1, 1)
    x0 = a.sqrt() * inp["x_t"] - (1 - a).sqrt() * inp["target"]
    assert torch.allclose(x0, batch["pixels"], atol=1e-4)
    # The input at the top of the range carries the degraded clip, not the clean one.
    plain = Recipe(dataclasses.replace(recipe.cfg, refine=RefineConfig()), LOGSNR, recipe.encoder,
                   recipe.autoencoder, recipe.noise_scheduler)
    assert not torch.equal(plain.inputs(batch, "video", sample_generators(7, 0, "video", 0, 3), "cpu")["x_t"],
                           inp["x_t"])


def test_refine_config_errors(tmp_path):
    base = ["recipe.refine.enabled=true", "recipe.refine.base_height=8", "recipe.refine.base_width=8",
            "train.validation_prompts=[]"]
    cfg = load_config(None, base)
    assert cfg.recipe.refine.enabled
    with pytest.raises(ConfigError, match="needs base_height and base_width"):
        load_config(None, ["recipe.refine.enabled=true"])
    with pytest.raises(ConfigError, match="strength must be in"):
        load_config(None, [*base, "recipe.refine.strength=1.5"])
    with pytest.raises(ConfigError, match="larger than the training clips"):
        load_config(None, [*base, "recipe.refine.base_height=64", "data.height=32"])
    with pytest.raises(ConfigError, match="video_high_noise_share must be 0"):
        load_config(None, [*base, "recipe.video_high_noise_share=0.5"])
    with pytest.raises(ConfigError, match="does not generate from prompts"):
        load_config(None, [*base[:3], "train.validation_prompts=[a red circle]"])
    with pytest.raises(ConfigError, match="a data.cache holds latents only"):
        load_config(None, [*base, "data.kind=sources", f"data.videos={tmp_path}", f"data.cache={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, [*base, "recipe.refine.scale=2"])
    template = load_config(REPO / "configs/refine_720p.yaml")
    assert template.recipe.refine.strength == 0.7 and template.model.unet["refiner_layout"]


# -- whole runs from files on disk -----------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from pipeline_fixtures import toy_model_folder

    root = tmp_path_factory.mktemp("refine_files")
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "data", "toy", str(root), "--num-images", "8",
                        "--num-videos", "8", "--num-captioned", "0", "--size", "32", "--frames", "8"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    toy_model_folder(root / "t2v")  # the base T2V folder: 3-channel pixel UNet, toy encoder 32/32
    return root


def run_args(files: Path, out: Path, **extra) -> list[str]:
    sets = {
        "data.kind": "sources", "data.images": str(files / "images"), "data.videos": str(files / "videos"),
        "data.height": 32, "data.width": 32, "data.num_frames": 4, "data.fps": 8, "data.num_workers": 2,
        "data.image_batch_size": 2, "data.video_batch_size": 1,
        "model.init": "pretrained", "model.init_path": str(files / "t2v"), "model.unet": "{refiner_layout: true}",
        "encoder.args": "{text_dim: 32, image_dim: 32, max_length: 8}",
        "schedule.beta_schedule": "logsnr_cosine_interp", "schedule.zero_terminal_snr": False,
        "recipe.refine.enabled": True, "recipe.refine.base_height": 16, "recipe.refine.base_width": 16,
        "recipe.refine.strength": 0.5,
        "optim.lr": 1e-3, "optim.warmup_steps": 1, "train.max_steps": 4, "train.log_every": 1,
        "train.checkpoint_every": 2, "train.keep_last": 4, "train.progress": False, "train.trackers": "[]",
        "train.validation_prompts": "[]", "out_dir": str(out),
    }
    sets.update(extra)
    return sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])


def train_cmd(files, out, **extra):
    return [sys.executable, "-m", "tft2v.cli", "train", str(REPO / "configs/toy.yaml"), *run_args(files, out, **extra)]


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_refine_stage_from_a_t2v_folder_resumes_exactly_and_refines(files, tmp_path):
    full = subprocess.run(train_cmd(files, tmp_path / "full"), capture_output=True, text=True, env=ENV, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    left = kill_after_checkpoint(train_cmd(files, tmp_path / "killed"), tmp_path / "killed", "step-00000002",
                                 REPO, ENV)
    assert left and left[-1].name < "step-00000004", "the run finished before it was killed"
    resumed = subprocess.run([*train_cmd(files, tmp_path / "killed"), "--resume", "auto"], capture_output=True,
                             text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(tmp_path / "killed") == losses(tmp_path / "full") and sorted(losses(tmp_path / "full")) == [1, 2, 3, 4]

    from tft2v.pipeline import TFT2VPipeline
    from tft2v.refine_pipeline import TFT2VRefinePipeline

    model = tmp_path / "full" / "model"
    assert TFT2VRefinePipeline.from_pretrained(model).is_refiner
    generator = TFT2VPipeline.from_pretrained(model)
    assert generator.unet.config.refiner_layout
    with pytest.raises(TFT2VError, match="refinement stage"):
        generator("a red circle", num_frames=4)  # a refiner does not generate from noise
    out = tmp_path / "refined.mp4"
    clip = sorted((files / "videos").glob("*.mp4"))[0]
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "refine", str(clip), "--model", str(model), "--prompt",
                        "a red circle", "--out", str(out), "--steps", "3", "--strength", "0.5"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.is_file()


@pytest.mark.slow
def test_refine_stage_through_lora_exports_a_refiner(files, tmp_path):
    run = tmp_path / "lora"
    r = subprocess.run(train_cmd(files, run, **{"model.lora.rank": 4, "model.lora.targets": "[temporal, spatial]",
                                                "train.max_steps": 2, "train.checkpoint_every": 0}),
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from tft2v.refine_pipeline import TFT2VRefinePipeline

    pipe = TFT2VRefinePipeline.from_pretrained(run / "model")
    assert pipe.is_refiner
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    out = pipe(video, "a red circle", strength=0.5, num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 4, 32, 32) and torch.isfinite(out).all()


@pytest.mark.slow
def test_fine_tunes_a_converted_sr600_refiner(tmp_path):
    """VGen's SR600 layout (the shared vectors' tiny refiner, converted with a tiny VAE) trains as a refinement
    stage: no image-token MLP, so text-free clips go in with the empty caption only."""
    import numpy as np

    from media_fixtures import write_video
    from tests._tiny import shared_dir, tiny_kl_autoencoder

    tiny_kl_autoencoder().save_pretrained(tmp_path / "vae")
    sr = tmp_path / "sr"
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "convert", "vgen",
                        str(shared_dir() / "vectors" / "sr600_tiny.safetensors"), str(sr), "--head-dim", "16",
                        "--toy-encoder", "--vae", str(tmp_path / "vae"), "--resolution", "64x20"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    for i in range(2):
        write_video(tmp_path / "clips" / f"c{i}.mp4", rng.integers(0, 255, (6, 20, 64, 3), dtype=np.uint8), fps=8)
    out = tmp_path / "run"
    args = run_args(tmp_path, out, **{
        "data.images": "", "data.videos": str(tmp_path / "clips"), "data.ratio": "[0, 1]",
        "data.height": 20, "data.width": 64, "data.num_frames": 4, "data.num_workers": 0,
        "model.init_path": str(sr), "model.unet": "{image_embed_dim: null}",
        "recipe.image_tokens_on_videos": False, "autoencoder.kind": "kl", "autoencoder.path": str(tmp_path / "vae"),
        "encoder.args": "{text_dim: 1024, image_dim: 32, max_length: 8}",
        "recipe.refine.base_height": 10, "recipe.refine.base_width": 32,
        "train.max_steps": 2, "train.checkpoint_every": 0})
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "train", str(REPO / "configs/toy.yaml"), *args],
                       capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(np.isfinite(v) for v in losses(out).values()) and len(losses(out)) == 2
    assert json.loads((out / "model" / "model_index.json").read_text())["tft2v"]["stage"] == "refine"


def test_a_refiner_with_an_image_mlp_sees_the_middle_frames_tokens():
    """A stage trained through the motion branch (image-token MLP) refines with the image tokens of the input's
    middle frame in the conditional half; switching them off changes the result, and a plain folder refuses."""
    from pipeline_fixtures import TINY_DEFAULTS, toy_pipeline
    from tft2v.refine_pipeline import TFT2VRefinePipeline

    base = toy_pipeline()
    pipe = TFT2VRefinePipeline(base.unet, base.scheduler, base.encoder, base.autoencoder,
                               defaults={**TINY_DEFAULTS, "stage": "refine"})
    assert pipe.is_refiner and not base.is_refiner
    video = torch.rand(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(strength=0.6, num_inference_steps=2, output_type="pt", guidance_scale=3.0)
    with_tokens = pipe(video, "a red circle", generator=torch.Generator().manual_seed(1), **kw)
    without = pipe(video, "a red circle", generator=torch.Generator().manual_seed(1), image_tokens=False, **kw)
    assert with_tokens.shape == (1, 3, 4, 16, 16)
    assert not torch.allclose(with_tokens, without, atol=1e-4)
    with pytest.raises(TFT2VError, match="not a refinement stage"):
        TFT2VRefinePipeline(base.unet, base.scheduler, base.encoder, base.autoencoder,
                            defaults=TINY_DEFAULTS)(video, "a red circle", **kw)


def test_edge_sharpness_reads_lower_on_a_degraded_clip():
    from tft2v.metrics.toy_sharpness import clip_sharpness

    world = ToyWorld(size=64, frames=3, size_range=(12, 24))
    clips = generate("videos", 3, seed=0, world=world)
    sharp = [clip_sharpness(clips.sample(i)["pixels"]) for i in range(3)]
    blurred = [clip_sharpness(refine_step.degrade(clips.sample(i)["pixels"][None], (32, 32))[0]) for i in range(3)]
    assert all(b < 0.8 * s for s, b in zip(sharp, blurred))
    assert clip_sharpness(torch.zeros(3, 2, 16, 16)) is None  # nothing detected: no outline


REFINE_SETS = {"recipe.refine.enabled": True, "recipe.refine.base_height": 8, "recipe.refine.base_width": 8,
               "schedule.beta_schedule": "logsnr_cosine_interp", "schedule.zero_terminal_snr": False}


@pytest.mark.slow
def test_refine_stage_with_fsdp_buckets_and_workers(tmp_path):
    """Two FSDP2 ranks (gloo) over landscape / portrait / square clips and PNGs in buckets, 2 loader workers each:
    every bucket's clips are degraded by the same factors (8/16), and the run exports a refinement folder."""
    from bucket_fixtures import BUCKETS, corpus
    from test_fsdp import fsdp_env
    from test_real_files_training import overrides, rows

    corpus(tmp_path / "data")
    out = tmp_path / "run"
    sets = overrides(tmp_path / "data", out, **{"data.buckets": json.dumps(BUCKETS), "train.max_steps": 3,
                                                 "train.export": True, **REFINE_SETS})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "tft2v.cli", "train", str(REPO / "configs/toy_files.yaml"), *sets],
                       capture_output=True, text=True, cwd=REPO, env=fsdp_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from tft2v.train.checkpoint import list_checkpoints

    ckpt = list_checkpoints(out / "checkpoints")[-1]
    assert json.loads((ckpt / "trainer_state.json").read_text())["distributed_type"] == "FSDP"
    assert sorted(losses(out)) == [1, 2, 3] and all(v == v for v in losses(out).values())
    shapes = {b.split("x")[0] + "x" + b.split("x")[1] for x in rows(out, "samples.jsonl") for b in x["video_buckets"]}
    assert len(shapes) >= 2, shapes  # ranks and steps in buckets of different aspect
    assert json.loads((out / "model" / "model_index.json").read_text())["tft2v"]["stage"] == "refine"


def test_a_run_that_switches_the_bases_layout_or_adds_layers_writes_its_base(tmp_path):
    """A LoRA export refers to its pretrained base folder only while that folder still describes the run's UNet."""
    from pipeline_fixtures import toy_model_folder
    from tft2v.models import TFT2VUNet
    from tft2v.train.data import changes_pretrained_layout

    folder = toy_model_folder(tmp_path / "base")
    unet = TFT2VUNet.from_pretrained(folder / "unet")
    assert not changes_pretrained_layout(str(folder), unet)
    assert changes_pretrained_layout(str(folder), TFT2VUNet.from_pretrained(folder / "unet", refiner_layout=True))
    assert changes_pretrained_layout(str(folder), unet.with_options(temporal_text_attention=True))
