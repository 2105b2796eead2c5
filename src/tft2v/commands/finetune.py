"""``tft2v finetune``: LoRA-adapt a model folder to your own clips (no captions needed) — issue #15.

Text-free clips train the motion branch, optional image–text pairs (``--images``: PNG/JPG + .txt) the
content branch, in the same steps, with the unchanged TF-T2V recipe; only the adapters learn
(:mod:`tft2v.models.lora`). Writes ``OUT/lora/`` (the adapter: ``tft2v generate --lora OUT/lora``),
``OUT/samples/before_*.mp4`` and ``after_*.mp4`` for each ``--prompt``, and the training run in ``OUT/run``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import TFT2VError

VIDEO_EXTS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif"}
EXAMPLES = """Examples:
  tft2v finetune --model runs/toy/model --clips my_clips/ --out runs/mine --prompt "a red circle"
  tft2v generate --model runs/toy/model "a red circle" --lora runs/mine/lora:0.8 --out mine.mp4
"""


def default_steps(num_clips: int) -> int:
    """~50 steps per clip, at least 100, at most 2000."""
    return int(min(2000, max(100, 50 * num_clips)))


def count_clips(folder: Path) -> int:
    if not folder.is_dir():
        raise TFT2VError(f"--clips {folder}: not a folder")
    n = sum(1 for f in folder.rglob("*") if f.suffix.lower() in VIDEO_EXTS)
    if not n:
        raise TFT2VError(f"--clips {folder}: no video files ({', '.join(sorted(VIDEO_EXTS))})")
    return n


def _samples(pipe, prompts, folder: Path, tag: str, seed: int, frames, steps, fps) -> list[Path]:
    import torch

    from tft2v import export_video

    paths = []
    for i, text in enumerate(prompts):
        with torch.no_grad():
            video = pipe(text, num_frames=frames, num_inference_steps=steps,
                         generator=torch.Generator().manual_seed(seed + i), output_type="uint8")
        paths.append(export_video(video[0], folder / f"{tag}_{i:02d}.mp4", fps=fps))
    return paths


def finetune(
    model: Path = typer.Option(..., "--model", "-m", help="Base model folder (tft2v train / convert output)."),
    clips: Path = typer.Option(..., "--clips", help="Folder of your video clips (no captions needed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: lora/, samples/, run/."),
    images: Optional[Path] = typer.Option(None, "--images", help="Optional image–text pairs (PNG/JPG + .txt) "
                                          "for content (spatial) adapters."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="Validation prompt (repeatable): before/"
                                               "after sample videos."),
    rank: int = typer.Option(16, min=1, help="LoRA rank of the temporal (motion) adapters."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: 50 per clip, 100–2000)."),
    lr: float = typer.Option(1e-4, min=0.0, help="Learning rate."),
    batch: int = typer.Option(2, min=1, help="Clips (and images) per step."),
    frames: Optional[int] = typer.Option(None, min=1, help="Frames per training clip (default: the model's)."),
    size: Optional[int] = typer.Option(None, min=8, help="Training frame side (default: the model's height/width)."),
    sample_steps: int = typer.Option(25, min=1, help="Denoising steps of the before/after samples."),
    seed: int = typer.Option(0, min=0, help="Seed of training and of the samples."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar while training."),
) -> None:
    """Fine-tune LoRA adapters on your own clips (motion) and optionally images (content); the base stays
    frozen. Then use the adapter with ``tft2v generate --lora OUT/lora[:SCALE]``."""
    from tft2v.config import load_config
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.trainer import Trainer

    num_clips = count_clips(clips)
    if images is not None and not images.is_dir():
        raise TFT2VError(f"--images {images}: not a folder")
    pipe = TFT2VPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    d = pipe.defaults
    frames = frames or d["num_frames"]
    height, width = (size, size) if size else (d["height"], d["width"])
    steps = steps or default_steps(num_clips)
    prompts = list(prompt or [])
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(f"finetune: {num_clips} clips{' + images' if images else ''}, {steps} steps, rank {rank}, "
               f"{frames} frames of {height}x{width}")

    before = _samples(pipe, prompts, out / "samples", "before", seed, frames, sample_steps, d["fps"])
    for p in before:
        typer.echo(f"wrote {p}")

    targets = ["temporal"] + (["spatial"] if images is not None else [])
    # One adapter: temporal modules (learn from the clips), + spatial ones with --images, same rank.
    sets = {
        "out_dir": str(out / "run"), "seed": seed,
        "data.kind": "sources", "data.videos": str(clips), "data.images": str(images) if images else "",
        "data.height": height, "data.width": width, "data.num_frames": frames, "data.fps": float(d["fps"]),
        "data.video_batch_size": batch, "data.image_batch_size": batch,
        "data.ratio": "[1, 1]" if images is not None else "[0, 1]", "data.labelled_ratio": 0.0,
        "model.init": "pretrained", "model.init_path": str(model), "model.unet": "{}",
        "model.lora": f"{{rank: {rank}, targets: [{', '.join(targets)}]}}",
        "recipe.image_tokens_on_videos": bool(pipe.unet.config.image_embed_dim),
        "optim.lr": lr, "optim.warmup_steps": min(50, max(1, steps // 10)), "optim.ema_decay": 0.0,
        "train.max_steps": steps, "train.log_every": max(1, steps // 20), "train.checkpoint_every": 0,
        "train.keep_last": 1, "train.progress": progress, "train.trackers": "[]", "train.export": False,
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    # The model folder's own encoder and autoencoder, not ones rebuilt from a config.
    trainer = Trainer(cfg, overwrite=overwrite, encoder=pipe.encoder, autoencoder=pipe.autoencoder)
    summary = trainer.run()
    adapter = out / "lora"
    if adapter.exists():
        shutil.rmtree(adapter)
    shutil.copytree(Path(summary["checkpoint"]) / "lora", adapter)
    typer.echo(f"wrote adapter {adapter}  (loss {summary['loss_first']} -> {summary['loss_last']})")
    del trainer

    pipe.load_lora_weights(adapter, adapter_name="finetune")
    after = _samples(pipe, prompts, out / "samples", "after", seed, frames, sample_steps, d["fps"])
    for p in after:
        typer.echo(f"wrote {p}")
    typer.echo(f"use it: tft2v generate --model {model} \"{prompts[0] if prompts else 'PROMPT'}\" --lora {adapter}")
