"""``tft2v finetune``: LoRA-adapt a model folder to your own clips (no captions needed) — issue #15.

Text-free clips train the motion branch, optional image–text pairs (``--images``: PNG/JPG + .txt) the
content branch, in the same steps, with the unchanged TF-T2V recipe; only the adapters learn
(:mod:`tft2v.models.lora`). Writes ``OUT/lora/`` (the adapter: ``tft2v generate --lora OUT/lora``),
``OUT/samples/before_*.mp4`` and ``after_*.mp4`` for each ``--prompt``, and the training run in ``OUT/run``.

``--prior-images`` (DreamBooth's prior preservation) mixes captioned images of what the base model already
draws — e.g. its own samples of ordinary prompts — into the image branch, in proportion to the files, so
the adapter learns to leave ordinary prompts alone. With ``--clips`` and no ``--images`` they are the image
branch's only data: a temporal adapter then also trains on captioned single frames (the temporal layers
run on images too), which keeps captions in control (docs/research/lora_demo.md, "Prior images for the motion
adapter, and where its colour goes"). ``--images`` alone (no
``--clips``) trains content adapters from image–text pairs only; ``--target`` picks the adapted groups
or module-name regular expressions (default: ``temporal``, plus ``spatial`` with ``--images``).
``--add-word`` gives a new caption word (e.g. a new colour) its own token in the toy text encoder; the
adapter folder records it (``encoder_words``) and loading the adapter adds it again. ``--colour-permute``
reorders each clip's RGB channels at random while training, so a motion adapter cannot take the clips'
colours along.
:func:`run_finetune` is the same as a Python function (used by ``benchmarks/lora_demo.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import typer

from tft2v.data.media_types import VIDEO_EXTS
from tft2v.errors import TFT2VError

EXAMPLES = """Examples:
  tft2v finetune --model runs/toy/model --clips my_clips/ --out runs/mine --prompt "a red circle"
  tft2v generate --model runs/toy/model "a red circle" --lora runs/mine/lora:0.8 --out mine.mp4
  tft2v finetune --model runs/toy/model --images orange/images --target spatial --add-word orange --out runs/orange
"""


def default_steps(num_clips: int) -> int:
    """~50 steps per clip, at least 100, at most 2000."""
    return int(min(2000, max(100, 50 * num_clips)))


def count_clips(folder: Path) -> int:
    if not folder.is_dir():
        raise TFT2VError(f"--clips {folder}: not a folder")
    n = sum(1 for f in folder.rglob("*") if f.suffix.lower() in VIDEO_EXTS)
    if not n:
        raise TFT2VError(f"--clips {folder}: no video files ({', '.join(VIDEO_EXTS)})")
    return n


def image_manifest(images: Path | None, prior: Path, out: Path) -> Path:
    """``out`` as a JSONL manifest of the captioned images in ``images`` (if any) and ``prior`` (absolute
    paths): one image source holding both, so a step draws from them in proportion to their files."""
    from tft2v.data.sources import scan_folder

    if not prior.is_dir():
        raise TFT2VError(f"--prior-images {prior}: not a folder")
    rows = []
    for folder in (f for f in (images, prior) if f is not None):
        items = scan_folder(folder, "image")
        if not items:
            raise TFT2VError(f"{folder}: no image files")
        for it in items:
            caption = it.read_caption()
            if not caption:
                raise TFT2VError(f"{it.media}: no caption (.txt beside it); the image branch needs captioned images")
            rows.append({"path": str(Path(it.media).resolve()), "caption": caption})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


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


def run_finetune(model: Path, clips: Path | None, out: Path, images: Path | None = None,
                 prompts: list[str] | None = None, rank: int = 16, steps: int | None = None, lr: float = 1e-4,
                 batch: int = 2, frames: int | None = None, size: int | None = None, sample_steps: int = 25,
                 seed: int = 0, overwrite: bool = False, progress: bool = True, targets: list[str] | None = None,
                 add_words: list[str] | None = None, high_noise_share: float = 0.0,
                 high_noise_start: int | None = None, prior_images: Path | None = None,
                 image_batch: int | None = None, colour_permute: bool = False, echo=typer.echo) -> dict:
    """The work of ``tft2v finetune``; returns ``{"adapter", "steps", "targets", "words", "summary"}``
    (``summary``: the trainer's run summary); ``high_noise_start`` None: the recipe's default."""
    from tft2v.config import load_config
    from tft2v.models import lora
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.trainer import Trainer

    if clips is None and images is None:
        raise TFT2VError("give --clips (motion) and/or --images (content) to fine-tune on")
    num_clips = count_clips(clips) if clips is not None else 0
    if images is not None and not images.is_dir():
        raise TFT2VError(f"--images {images}: not a folder")
    targets = list(targets or (["temporal"] if clips is not None else []) + (["spatial"] if images is not None else []))
    pipe = TFT2VPipeline.from_pretrained(model)
    for t in targets:  # each target on its own: one that selects nothing is a typo, not a no-op
        lora.target_modules(pipe.unet, [t])
    pipe.set_progress_bar_config(disable=True)
    words = list(dict.fromkeys(add_words or []))
    if words:
        if not hasattr(pipe.encoder, "add_words"):
            raise TFT2VError(f"--add-word needs the toy text encoder; this model's encoder is {pipe.encoder.kind!r}")
        pipe.encoder.add_words(words)  # before the "before" samples: both sides read the word the same way
    d = pipe.defaults
    frames = frames or d["num_frames"]
    height, width = (size, size) if size else (d["height"], d["width"])
    steps = steps or default_steps(num_clips or sum(1 for _ in images.glob("*.txt")))
    prompts = list(prompts or [])
    out.mkdir(parents=True, exist_ok=True)
    data = " + ".join(x for x in (f"{num_clips} clips" if clips is not None else "", "images" if images else "",
                                  "prior images" if prior_images else "") if x)
    echo(f"finetune: {data}, {steps} steps, rank {rank} on {'+'.join(targets)}, {frames} frames of {height}x{width}"
         + (f", new words: {' '.join(words)}" if words else ""))

    image_source = image_manifest(images, prior_images, out / "images.jsonl") if prior_images else images
    before = _samples(pipe, prompts, out / "samples", "before", seed, frames, sample_steps, d["fps"])
    for p in before:
        echo(f"wrote {p}")

    # One adapter on the chosen groups, same rank: clips teach the temporal modules, images the spatial ones.
    ratio = f"[{1 if image_source is not None else 0}, {1 if clips is not None else 0}]"
    sets = {
        "out_dir": str(out / "run"), "seed": seed,
        "data.kind": "sources",
        "data.videos": str(clips) if clips else "", "data.images": str(image_source) if image_source else "",
        "data.height": height, "data.width": width, "data.num_frames": frames, "data.fps": float(d["fps"]),
        "data.video_batch_size": batch, "data.image_batch_size": image_batch or batch,
        "data.ratio": ratio, "data.labelled_ratio": 0.0,
        "model.init": "pretrained", "model.init_path": str(model), "model.unet": "{}",
        "model.lora": json.dumps({"rank": rank, "targets": targets}),  # JSON is YAML; regexes stay intact
        "recipe.image_tokens_on_videos": bool(pipe.unet.config.image_embed_dim),
        "recipe.video_high_noise_share": high_noise_share, "recipe.video_colour_permute": colour_permute,
        "optim.lr": lr, "optim.warmup_steps": min(50, max(1, steps // 10)), "optim.ema_decay": 0.0,
        "train.max_steps": steps, "train.log_every": max(1, steps // 20), "train.checkpoint_every": 0,
        "train.keep_last": 1, "train.progress": progress, "train.trackers": "[]", "train.export": False,
    }
    if high_noise_start is not None:
        sets["recipe.video_high_noise_start"] = high_noise_start
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    # The model folder's own encoder and autoencoder, not ones rebuilt from a config.
    trainer = Trainer(cfg, overwrite=overwrite, encoder=pipe.encoder, autoencoder=pipe.autoencoder)
    summary = trainer.run()
    adapter = out / "lora"
    if adapter.exists():
        shutil.rmtree(adapter)
    shutil.copytree(Path(summary["checkpoint"]) / "lora", adapter)
    if words:
        lora.update_meta(adapter, encoder_words=words)
    echo(f"wrote adapter {adapter}  (loss {summary['loss_first']} -> {summary['loss_last']})")
    del trainer

    if prompts:
        fresh = TFT2VPipeline.from_pretrained(model)  # the base encoder: the adapter must bring its words itself
        fresh.set_progress_bar_config(disable=True)
        fresh.load_lora_weights(adapter, adapter_name="finetune")
        after = _samples(fresh, prompts, out / "samples", "after", seed, frames, sample_steps, d["fps"])
        for p in after:
            echo(f"wrote {p}")
    echo(f"use it: tft2v generate --model {model} \"{prompts[0] if prompts else 'PROMPT'}\" --lora {adapter}")
    return {"adapter": adapter, "steps": steps, "targets": targets, "words": words, "summary": summary}


def finetune(
    model: Path = typer.Option(..., "--model", "-m", help="Base model folder (tft2v train / convert output)."),
    clips: Optional[Path] = typer.Option(None, "--clips", help="Folder of your video clips (no captions needed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: lora/, samples/, run/."),
    images: Optional[Path] = typer.Option(None, "--images", help="Optional image–text pairs (PNG/JPG + .txt) "
                                          "for content (spatial) adapters."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="Validation prompt (repeatable): before/"
                                               "after sample videos."),
    rank: int = typer.Option(16, min=1, help="LoRA rank of the adapters."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: 50 per clip, 100–2000)."),
    lr: float = typer.Option(1e-4, min=0.0, help="Learning rate."),
    batch: int = typer.Option(2, min=1, help="Clips (and images) per step."),
    frames: Optional[int] = typer.Option(None, min=1, help="Frames per training clip (default: the model's)."),
    size: Optional[int] = typer.Option(None, min=8, help="Training frame side (default: the model's height/width)."),
    sample_steps: int = typer.Option(25, min=1, help="Denoising steps of the before/after samples."),
    seed: int = typer.Option(0, min=0, help="Seed of training and of the samples."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar while training."),
    target: Optional[list[str]] = typer.Option(None, "--target", help="Adapted group (repeatable): temporal, "
                                               "spatial, spatial_conv, text_kv (cross-attention keys/values: a new "
                                               "word), attn2_kv (text_kv + temporal attn2 keys/values), or a "
                                               "module-name regular expression, e.g. '.*temporal_conv.*' (default: "
                                               "temporal, + spatial with --images)."),
    add_word: Optional[list[str]] = typer.Option(None, "--add-word", help="New caption word (repeatable, e.g. a new "
                                                 "colour) to give its own toy-encoder token; the adapter records it."),
    high_noise_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of the clips' training timesteps "
                                           "drawn from t >= --high-noise-start, where a motion is decided "
                                           "(recipe.video_high_noise_share)."),
    high_noise_start: Optional[int] = typer.Option(None, min=0, help="First timestep of that high-noise range "
                                                  "(default: recipe.video_high_noise_start, 600)."),
    prior_images: Optional[Path] = typer.Option(None, "--prior-images", help="Captioned images of ordinary "
                                                "prompts (PNG/JPG + .txt), mixed with --images (or, with --clips "
                                                "alone, the image branch's data) so the adapter leaves ordinary "
                                                "prompts alone (prior preservation)."),
    image_batch: Optional[int] = typer.Option(None, "--image-batch", min=1, help="Images per step in the image "
                                              "branch (default: --batch)."),
    colour_permute: bool = typer.Option(False, "--colour-permute", help="Reorder each clip's RGB channels at "
                                        "random while training, so a motion adapter does not learn the clips' "
                                        "colours (recipe.video_colour_permute)."),
) -> None:
    """Fine-tune LoRA adapters on your own clips (motion) and/or images (content); the base stays frozen.
    Then use the adapter with ``tft2v generate --lora OUT/lora[:SCALE]``."""
    run_finetune(model, clips, out, images=images, prompts=prompt, rank=rank, steps=steps, lr=lr, batch=batch,
                 frames=frames, size=size, sample_steps=sample_steps, seed=seed, overwrite=overwrite,
                 progress=progress, targets=target, add_words=add_word, high_noise_share=high_noise_share,
                 high_noise_start=high_noise_start, prior_images=prior_images, image_batch=image_batch,
                 colour_permute=colour_permute)
