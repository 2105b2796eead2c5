"""GPU check: every CUDA-only check of the trainer and pipeline, and two measurements, as ONE JSON line.

For the first GPU machine (one H100/H200: a few minutes, ≤ 8 by design):

    python benchmarks/gpu_check.py                 # everything on cuda
    python benchmarks/gpu_check.py --quick         # small sizes: exercises the script's logic (seconds on CPU)
    python benchmarks/gpu_check.py --only e,f      # a subset (part letters below)

Checks (status "pass" / "fail", "error" with the exception text, or "skipped: no CUDA"):

* (a) ``compositional_step`` — the tiny Trainer with all six recipe.conditions (depth via 'luminance',
  masked with per-sample masks, condition dropout) trains two steps on cuda; every tensor the UNet is
  called with (noisy latents, timesteps, text, each condition, each dropout mask), every parameter,
  optimizer state and EMA weight is on cuda, and no op inside the step computes a tensor of ≥ 256
  elements on the CPU (a forgotten ``device=`` would);
* (b) ``bf16_step`` — the same tiny Trainer with ``train.mixed_precision=bf16``: losses finite, the UNet
  output is bf16 (autocast on), first-step loss within 2e-2 (relative) of fp32's on the same batch;
* (c) ``fsdp_1gpu`` — ``accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 1``
  of two tiny training steps plus a checkpoint save (FSDP2, sharded optimizer state), in a child process;
  its error text is reported, not raised;
* (d) ``cpu_offload_generation`` — a small bf16 pipeline with ``enable_model_cpu_offload``: the UNet runs
  on cuda, every component is back on the CPU afterwards, and the video equals the one generated
  without offload.

Measurements:

* (e) ``generation_memory`` — ``torch.cuda.max_memory_allocated`` of one generation with the VGen-size
  UNet (``TFT2VUNet()`` defaults, 1.4 B parameters, random init) at 16×256×448 (latent 16×32×56) in bf16
  with model CPU offload, sequential CFG (``enable_unet_batch_chunking(1)``) and 2-frame VAE decode, a
  random AutoencoderKL of SD geometry and the toy encoder at CLIP width; target ≤ 8 GiB (pass/fail);
* (f) ``train_mfu`` — one bf16-autocast training step (fwd + bwd + AdamW, fp32 master weights) of the
  same SD-2.1-width UNet (320 channels, mult 1/2/4/4) on a video batch (B×16 frames, latent 32×56,
  77×1024 text, image tokens), FLOPs from ``torch.utils.flop_counter``, against a measured bf16 matmul
  peak (8192³, best of 20);
* (g) ``lora_train_memory`` — ``benchmarks/lora_memory.py``'s cases on cuda: peak memory and step time of a
  mid-config video train step, full fine-tune vs temporal LoRA rank 16, gradient checkpointing off/on;
* (h) ``refine_memory_720p`` — ``torch.cuda.max_memory_allocated`` of one 1280x720 x 32-frame refinement
  (SR600-size UNet in bf16, VAE tiling and 2-frame chunks, sequential CFG, model offload).

Without CUDA every part reports "skipped: no CUDA"; with ``--quick`` each part also runs its logic on
the CPU at small sizes and puts that result (or its error) under "cpu_dry_run".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tft2v") is None:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO / "src"))
SKIPPED = "skipped: no CUDA"
BF16_REL_TOL = 2e-2
TARGET_GIB = 8.0
ALL_CONDITIONS = "[sketch, single_sketch, depth, motion, masked, local_image]"
CPU_OP_NUMEL = 256  # a CPU op output at least this big inside a cuda step is reported


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _tiny_sets(out_dir: str, **extra) -> list[str]:
    """A tiny trainer config (width 8, 16×16, 4 frames, batches of 2), as ``--set`` strings."""
    sets = {
        "out_dir": out_dir, "data.toy_images": 16, "data.toy_videos": 16, "data.toy_captioned_videos": 8,
        "data.toy_object_size": "[3, 6]", "data.height": 16, "data.width": 16, "data.num_frames": 4,
        "data.image_batch_size": 2, "data.video_batch_size": 2,
        "model.unet": "{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5],"
                      " head_dim: 8, init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0,"
                      " image_embed_dim: null, dropout: 0.0, temporal_conv_dropout: 0.0}",
        "encoder.args": "{text_dim: 16, image_dim: 32, max_length: 4}", "recipe.image_tokens_on_videos": False,
        "optim.lr": 1e-3, "optim.warmup_steps": 1, "train.max_steps": 3, "train.log_every": 1,
        "train.checkpoint_every": 0, "train.progress": False, "train.trackers": "[]", "train.export": False,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def _tiny_trainer(out_dir: str, **extra):
    from tft2v.config import load_config
    from tft2v.train import Trainer

    _reset_accelerate()
    return Trainer(load_config(None, _tiny_sets(out_dir, **extra)))


def _tensors(x):
    import torch

    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


# -- (a) compositional training step on the device ------------------------------------------------------


def check_compositional_step(device: str, quick: bool) -> dict:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class CpuOps(TorchDispatchMode):
        """Counts ops whose output is a CPU tensor of ≥ CPU_OP_NUMEL elements."""

        def __init__(self):
            super().__init__()
            self.ops: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel() >= CPU_OP_NUMEL:
                    self.ops[str(func)] = self.ops.get(str(func), 0) + 1
            return out

    with tempfile.TemporaryDirectory() as tmp:
        size = 16 if quick else 32  # pixel space: the frame is the "latent", 1/8 of the condition pixel size
        extra = {"recipe.conditions": ALL_CONDITIONS, "recipe.depth_model": "luminance",
                 "recipe.condition_dropout": True, "data.height": size, "data.width": size,
                 "data.toy_object_size": "[3, 6]" if quick else "[6, 12]", "data.num_frames": 2 if quick else 4,
                 "model.unet.condition_channels": 4, "model.unet.condition_pixel_size": f"[{8 * size}, {8 * size}]",
                 "optim.ema_decay": 0.9}
        trainer = _tiny_trainer(str(Path(tmp) / "run"), **extra)
        seen: dict[str, set] = {}

        def record(module, args, kwargs):
            for name, value in [*(("arg%d" % i, a) for i, a in enumerate(args)), *kwargs.items()]:
                for t in _tensors(value):
                    seen.setdefault(name, set()).add(str(t.device))

        trainer.unet.register_forward_pre_hook(record, with_kwargs=True)
        batches, losses, cpu_ops = iter(trainer.loader), [], {}
        for _ in range(2):
            batch = next(batches)  # the loader's CPU batch is built outside the audited step
            audit = CpuOps()
            with audit:
                losses.append(trainer.train_step([batch])["loss"])
            for k, v in audit.ops.items():
                cpu_ops[k] = cpu_ops.get(k, 0) + v
        want = torch.device(device).type
        off = sorted(f"{name}@{d}" for name, devs in seen.items() for d in devs if not d.startswith(want))
        params_off = sum(p.device.type != want for p in trainer.model.parameters())
        state_off = sum(t.device.type != want for s in trainer.optimizer.state_dict()["state"].values()
                        for t in _tensors(s) if t.ndim > 0)
        ema_off = sum(p.device.type != want for p in trainer.ema.shadow_params)
        conditions = sorted(trainer.recipe.cfg.conditions)
        del trainer
    finite = all(math.isfinite(x) for x in losses)
    ok = finite and not off and not params_off and not state_off and not ema_off and (want == "cpu" or not cpu_ops)
    return {"status": "pass" if ok else "fail", "device": device, "losses": [round(x, 5) for x in losses],
            "conditions": conditions, "unet_inputs": sorted(seen), "unet_inputs_off_device": off,
            "params_off_device": params_off, "optimizer_state_off_device": state_off, "ema_off_device": ema_off,
            "cpu_ops_in_step": cpu_ops if want != "cpu" else "n/a on cpu"}


# -- (b) bf16 autocast training step ------------------------------------------------------------------


def check_bf16_step(device: str, quick: bool) -> dict:
    import torch

    from tft2v.models import TFT2VUNet

    def redraw_zero_init(unet):
        # The scratch UNet's zero-initialised output branches make the prediction exactly 0 (both losses
        # equal trivially); redraw them as in tests/test_precision.py.
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in unet.parameters():
                if not p.abs().sum():
                    p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(p.device))

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            extra = {} if precision == "fp32" else {"train.mixed_precision": "bf16"}
            trainer = _tiny_trainer(str(Path(tmp) / precision), **extra)
            assert isinstance(trainer.unet, TFT2VUNet)
            redraw_zero_init(trainer.unet)
            dtypes = set()
            trainer.unet.out[-1].register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)))
            batches = iter(trainer.loader)
            logs = [trainer.train_step([next(batches)]) for _ in range(2)]
            results[precision] = {"losses": [x["loss"] for x in logs], "first": logs[0], "dtypes": sorted(dtypes)}
            del trainer
    a, b = results["fp32"]["first"], results["bf16"]["first"]
    rel = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in ("loss", "image/loss", "video/loss", "grad_norm")}
    finite = all(math.isfinite(x) for r in results.values() for x in r["losses"])
    autocast = results["bf16"]["dtypes"] == ["torch.bfloat16"]
    ok = finite and autocast and max(rel.values()) <= BF16_REL_TOL
    return {"status": "pass" if ok else "fail", "device": device, "fp32_losses": results["fp32"]["losses"],
            "bf16_losses": results["bf16"]["losses"], "bf16_output_dtype": results["bf16"]["dtypes"],
            "first_step_rel_diff": {k: float(f"{v:.3g}") for k, v in rel.items()}, "tolerance": BF16_REL_TOL}


# -- (c) FSDP2 on one process ---------------------------------------------------------------------------


def fsdp_child(out_dir: str) -> None:
    """Run under ``accelerate launch``: two tiny steps and a checkpoint under FSDP; prints one JSON line."""
    import torch

    from tft2v.config import load_config
    from tft2v.train import Trainer
    from tft2v.train.checkpoint import is_fsdp2

    trainer = Trainer(load_config(None, _tiny_sets(out_dir, **{"optim.ema_decay": 0.9})))
    acc = trainer.accelerator
    batches = iter(trainer.loader)
    losses = [trainer.train_step([next(batches)])["loss"] for _ in range(2)]
    ckpt = trainer.save()
    files = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    param = next(trainer.model.parameters())
    print(json.dumps({"losses": losses, "distributed_type": str(acc.distributed_type), "fsdp2": is_fsdp2(acc),
                      "num_processes": acc.num_processes, "device": str(acc.device),
                      "param_type": type(param).__name__, "param_device": str(param.device),
                      "cuda": torch.cuda.is_available(), "checkpoint_files": files[:20]}))


def check_fsdp(device: str, quick: bool) -> dict:
    config = REPO / "configs" / "accelerate_fsdp.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        if not config.is_file():  # another engineer's config not there: the same settings, written here
            config = Path(tmp) / "fsdp.yaml"
            config.write_text(
                "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_machines: 1\nnum_processes: 1\n"
                "machine_rank: 0\nmixed_precision: 'no'\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\n"
                "fsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
                "  fsdp_transformer_layer_cls_to_wrap: ResBlock,SpatialTransformer,TemporalTransformer\n"
                "  fsdp_state_dict_type: SHARDED_STATE_DICT\n  fsdp_reshard_after_forward: true\n")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", "1", "--main_process_port", str(29500 + os.getpid() % 1000),
               str(Path(__file__).resolve()), "--fsdp-child", str(Path(tmp) / "run")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300 if not quick else 240, env=env,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": "timed out after the child's limit", "config": str(config)}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [x for x in proc.stderr.splitlines() if x.strip()]
        last = next((x for x in reversed(err) if "Error" in x or "error" in x), err[-1] if err else "no output")
        return {"status": "error", "error": last.strip()[:500], "returncode": proc.returncode,
                "stderr_tail": "\n".join(err[-8:])[-1500:], "config": str(config.relative_to(REPO))
                if config.is_relative_to(REPO) else "written by gpu_check"}
    child = json.loads(lines[-1])
    want = "cuda" if device == "cuda" else "cpu"
    ok = (child["fsdp2"] and all(math.isfinite(x) for x in child["losses"]) and child["param_device"].startswith(want)
          and child["param_type"] == "DTensor")
    return {"status": "pass" if ok else "fail", "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO)
            else "written by gpu_check", **child}


# -- (d) model CPU offload ------------------------------------------------------------------------------


def _small_pipeline(quick: bool):
    import torch
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import VideoAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.models import TFT2VUNet
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.sampling import build_scheduler

    torch.manual_seed(0)
    width = 16 if quick else 64
    unet = TFT2VUNet(in_channels=4, out_channels=4, model_channels=width, channel_mult=(1, 2), num_res_blocks=1,
                     attention_scales=(1.0, 0.5), head_dim=8 if quick else 16, init_temporal_heads=2, context_dim=64,
                     image_embed_dim=64, norm_num_groups=8, condition_channels=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output branches redrawn: the UNet's output reaches the video
        for p in unet.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16) if quick else (32, 32, 64, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8).eval()
    pipe = TFT2VPipeline(unet, build_scheduler("ddim"), build_encoder("toy", text_dim=64, image_dim=64),
                         VideoAutoencoder(vae))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.bfloat16)


def check_offload_generation(device: str, quick: bool) -> dict:
    import torch

    pipe = _small_pipeline(quick)
    size = 32 if quick else 64
    kwargs = dict(num_frames=2 if quick else 8, height=size, width=size, num_inference_steps=2, guidance_scale=3.0,
                  output_type="pt", decode_chunk_size=2)
    pipe.to(device)
    plain = pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), **kwargs).float().cpu()
    pipe.to("cpu")
    pipe.enable_model_cpu_offload(device)
    unet_ran_on = set()
    pipe.unet.register_forward_pre_hook(lambda m, args: unet_ran_on.add(str(next(m.parameters()).device)))
    _free(device)
    offloaded = pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), **kwargs).float().cpu()
    after = sorted({str(p.device) for m in pipe._modules() for p in m.parameters()})
    diff = (plain - offloaded).abs().max().item()
    want = torch.device(device).type
    ok = (bool(torch.isfinite(offloaded).all()) and after == ["cpu"] and diff <= 1e-2
          and all(d.startswith(want) for d in unet_ran_on))
    out = {"status": "pass" if ok else "fail", "device": device, "shape": list(offloaded.shape),
           "unet_ran_on": sorted(unet_ran_on), "components_after": after, "max_abs_diff_vs_no_offload": diff}
    if device == "cuda":
        out["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# -- (e) generation peak memory, VGen size --------------------------------------------------------------


def _vgen_unet(quick: bool, device: str):
    """``TFT2VUNet()`` (VGen: 320 channels, mult 1/2/4/4, 1.4 B parameters), or a tiny one for --quick."""
    import torch

    from tft2v.models import TFT2VUNet

    kwargs = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_scales=(0.5,), head_dim=8,
                  init_temporal_heads=1, norm_num_groups=8, context_dim=64, image_embed_dim=64) if quick else {}
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU is seconds; 1.4 B on the CPU takes much longer
        return TFT2VUNet(**kwargs)


def measure_generation_memory(device: str, quick: bool, steps: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import VideoAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.sampling import build_scheduler

    frames, height, width = (2, 32, 64) if quick else (16, 256, 448)
    t0 = time.perf_counter()
    unet = _vgen_unet(quick, device).eval().to(torch.bfloat16)
    params = sum(p.numel() for p in unet.parameters())
    # SD 2.1's VAE geometry (83.7 M parameters), random weights; a narrow one for --quick.
    channels = (8, 8, 16, 16) if quick else (128, 256, 512, 512)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=channels, layers_per_block=1 if quick else 2, latent_channels=4,
                        norm_num_groups=8 if quick else 32, sample_size=512, scaling_factor=0.18215).eval()
    encoder = build_encoder("toy", text_dim=unet.config.context_dim, image_dim=unet.config.image_embed_dim,
                            max_length=77)
    pipe = TFT2VPipeline(unet, build_scheduler("ddim"), encoder, VideoAutoencoder(vae))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(torch.bfloat16)
    pipe.enable_unet_batch_chunking(1)  # sequential CFG
    pipe.enable_model_cpu_offload(device)  # everything to the CPU; each component visits the device in turn
    build_s = time.perf_counter() - t0
    _free(device)
    denoise_peak = [0]

    def on_step(i, n, latents):
        if device == "cuda":
            denoise_peak[0] = max(denoise_peak[0], torch.cuda.max_memory_allocated())

    t0 = time.perf_counter()
    video = pipe("a corgi running on the beach", num_frames=frames, height=height, width=width,
                 num_inference_steps=steps, guidance_scale=9.0, generator=torch.Generator().manual_seed(0),
                 output_type="pt", decode_chunk_size=2, callback=on_step)
    seconds = time.perf_counter() - t0
    out = {"unet_parameters_m": round(params / 1e6, 1), "frames": frames, "size": [height, width],
           "latent": [frames, height // 8, width // 8], "steps": steps, "dtype": "bfloat16",
           "switches": ["model_cpu_offload", "unet_batch_chunk=1 (sequential CFG)", "decode_chunk_size=2"],
           "vae_block_out_channels": list(channels), "output_finite": bool(torch.isfinite(video.float()).all()),
           "build_s": round(build_s, 1), "generate_s": round(seconds, 1)}
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out.update({"peak_allocated_gib": round(peak / 2**30, 3), "peak_denoise_allocated_gib":
                    round(denoise_peak[0] / 2**30, 3), "peak_reserved_gib":
                    round(torch.cuda.max_memory_reserved() / 2**30, 3), "target_gib": TARGET_GIB,
                    "pass": peak <= TARGET_GIB * 2**30})
        out["status"] = "pass" if out["pass"] and out["output_finite"] else "fail"
    else:
        out["status"] = "ran (no CUDA peak on cpu)"
    del pipe, unet, vae
    return out


# -- (f) train-step MFU ----------------------------------------------------------------------------------


def matmul_peak(device: str, n: int, repeats: int) -> float:
    """Best-of-``repeats`` dense bf16 matmul FLOP/s at n³."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(repeats + 2):  # two warm-ups
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def measure_train_mfu(device: str, quick: bool, batch: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    frames, h, w = (2, 8, 8) if quick else (16, 32, 56)
    peak = matmul_peak(device, 256 if quick else 8192, 3 if quick else 20)
    _free(device)
    model = _vgen_unet(quick, device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cfg = model.config
    errors = []
    while batch >= 1:
        try:
            x = torch.randn(batch, 4, frames, h, w, device=device)
            t = torch.randint(0, 1000, (batch,), device=device)
            text = torch.randn(batch, 77, cfg.context_dim, device=device)
            image = torch.randn(batch, cfg.image_embed_dim, device=device)

            def sync():
                if device == "cuda":
                    torch.cuda.synchronize()

            def fwd_bwd():
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                    out = model(x, t, text, image_embeds=image)
                out.float().square().mean().backward()

            with FlopCounterMode(display=False) as counter:
                fwd_bwd()  # the warm-up too
            opt.step()
            opt.zero_grad(set_to_none=True)
            flops = counter.get_total_flops()
            fb, st = [], []
            for _ in range(1 if quick else 3):
                sync()
                t0 = time.perf_counter()
                fwd_bwd()
                sync()
                t1 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                fb.append(t1 - t0)
                st.append(time.perf_counter() - t0)
            break
        except torch.cuda.OutOfMemoryError as e:
            errors.append(f"batch {batch}: {_error(e)}")
            opt.zero_grad(set_to_none=True)
            _free(device)
            batch //= 2
    else:
        raise RuntimeError("; ".join(errors))
    step_s, fb_s = min(st), min(fb)
    out = {"status": "ok", "unet_parameters_m": round(params / 1e6, 1),
           "model_channels": cfg.model_channels, "channel_mult": list(cfg.channel_mult), "batch": batch,
           "frames": frames, "latent": [h, w], "context": [77, cfg.context_dim],
           "precision": "bf16 autocast, fp32 weights",
           "tflop_per_step": round(flops / 1e12, 3), "fwd_bwd_s": round(fb_s, 4), "step_s": round(step_s, 4),
           "matmul_peak_tflops": round(peak / 1e12, 3), "achieved_tflops": round(flops / step_s / 1e12, 3),
           "mfu": round(flops / step_s / peak, 4), "mfu_fwd_bwd": round(flops / fb_s / peak, 4)}
    if errors:
        out["oom_retries"] = errors
    if device == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model, opt
    return out


def measure_lora_memory(device: str, quick: bool) -> dict:
    """(g) train-step peak memory of the mid UNet, full fine-tune vs temporal LoRA rank 16, checkpointing
    off/on (``benchmarks/lora_memory.py``'s cases, in this process: CUDA memory is per-process peak, reset
    between cases)."""
    import torch
    from lora_memory import MID, run_case

    unet = dict(MID, model_channels=16, head_dim=8, context_dim=32, norm_num_groups=4) if quick else MID
    out = {}
    for case in ("full", "full-ckpt", "lora", "lora-ckpt"):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[case] = run_case(case, torch.get_num_threads(), unet=unet, frames=4 if quick else 16,
                             size=8 if quick else 32)
        _free(device)
    return {"status": "ok", **out}


# -- (h) 1280x720 refinement peak memory ------------------------------------------------------------------


def measure_refine_memory(device: str, quick: bool) -> dict:
    """VGen's refinement at its size: an SR600-size UNet (refiner layout, random, bf16), SD 2.1's VAE geometry
    with tiling and 2-frame chunks, sequential CFG, model offload; 32 frames at 720x1280, 2 + 2 steps."""
    import torch
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import VideoAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.models import TFT2VUNet
    from tft2v.refine_pipeline import TFT2VRefinePipeline
    from tft2v.sampling import build_scheduler

    frames, height, width = (2, 80, 64) if quick else (32, 720, 1280)
    kwargs = dict(model_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1, head_dim=8, init_temporal_heads=1,
                  norm_num_groups=8, context_dim=64) if quick else {}
    torch.manual_seed(0)
    with torch.device(device):
        unet = TFT2VUNet(image_embed_dim=None, condition_channels=0, refiner_layout=True, **kwargs)
    channels = (8, 8, 16, 16) if quick else (128, 256, 512, 512)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=channels, layers_per_block=1 if quick else 2, latent_channels=4,
                        norm_num_groups=8 if quick else 32, sample_size=512, scaling_factor=0.18215).eval()
    encoder = build_encoder("toy", text_dim=unet.config.context_dim, image_dim=unet.config.context_dim, max_length=77)
    pipe = TFT2VRefinePipeline(unet.eval(), build_scheduler("ddim"), encoder, VideoAutoencoder(vae),
                               defaults={"num_frames": frames, "height": height, "width": width})
    pipe.set_progress_bar_config(disable=True)
    pipe.to(torch.bfloat16)
    pipe.enable_vae_tiling()
    pipe.enable_unet_batch_chunking(1)
    pipe.enable_model_cpu_offload(device)
    _free(device)
    video = torch.rand(1, 3, frames, height * 256 // 720 // 2 * 2, width * 448 // 1280 // 2 * 2) * 2 - 1
    t0 = time.perf_counter()
    out = pipe(video, "a corgi running on the beach", num_inference_steps=1 if quick else 2, output_type="pt",
               generator=torch.Generator(device=device).manual_seed(0), decode_chunk_size=2)
    result = {"unet_parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), "frames": frames,
              "size": [height, width], "dtype": "bfloat16", "output_shape": list(out.shape),
              "switches": ["model_cpu_offload", "unet_batch_chunk=1", "vae_tiling", "decode_chunk_size=2"],
              "output_finite": bool(torch.isfinite(out.float()).all()), "refine_s": round(time.perf_counter() - t0, 1)}
    if device == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["status"] = "pass" if result["output_finite"] else "fail"
    else:
        result["status"] = "ran (no CUDA peak on cpu)"
    return result


# -- driver ------------------------------------------------------------------------------------------------

PARTS = {
    "a": ("compositional_step", lambda dev, a: check_compositional_step(dev, a.quick)),
    "b": ("bf16_step", lambda dev, a: check_bf16_step(dev, a.quick)),
    "c": ("fsdp_1gpu", lambda dev, a: check_fsdp(dev, a.quick)),
    "d": ("cpu_offload_generation", lambda dev, a: check_offload_generation(dev, a.quick)),
    "e": ("generation_memory", lambda dev, a: measure_generation_memory(dev, a.quick, a.steps)),
    "f": ("train_mfu", lambda dev, a: measure_train_mfu(dev, a.quick, a.mfu_batch)),
    "g": ("lora_train_memory", lambda dev, a: measure_lora_memory(dev, a.quick)),
    "h": ("refine_memory_720p", lambda dev, a: measure_refine_memory(dev, a.quick)),
}


def run_part(fn, device: str, args) -> dict:
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the final JSON line
            result = fn(device, args)
    except Exception as e:  # noqa: BLE001 — one failure must not hide the other parts
        traceback.print_exc(file=sys.stderr)
        result = {"status": "error", "error": _error(e)}
    finally:
        _reset_accelerate()
        _free(device)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; on a CPU-only machine a dry run of every part")
    ap.add_argument("--only", default="abcdefgh", help="part letters to run, e.g. 'e,f' (default: all)")
    ap.add_argument("--steps", type=int, default=2, help="(e) sampling steps; the peak does not grow with steps")
    ap.add_argument("--mfu-batch", type=int, default=2, help="(f) video batch size (halved on OOM)")
    ap.add_argument("--fsdp-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fsdp_child:
        fsdp_child(args.fsdp_child)
        return
    import torch

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    report = {"benchmark": "gpu_check", "quick": args.quick, "torch": torch.__version__,
              "cuda": torch.version.cuda if cuda else None,
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "parts": {}}
    for letter, (name, fn) in PARTS.items():
        if letter not in args.only:
            continue
        if cuda:
            report["parts"][name] = run_part(fn, "cuda", args)
        elif args.quick:
            report["parts"][name] = {"status": SKIPPED, "cpu_dry_run": run_part(fn, "cpu", args)}
        else:
            report["parts"][name] = {"status": SKIPPED}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
