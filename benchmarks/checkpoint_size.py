"""Bytes on disk of one training checkpoint of the "mid" UNet: full fine-tune vs temporal LoRA rank 16.

Both runs start from the same base (``unet_step.MID``, RGB pixel space, written once as a UNet folder and
used as ``model.init: pretrained``), train one step on toy data (2 frames of 16×16: the geometry does not
change the checkpoint) with EMA on, and write their final checkpoint. The full run's holds ``unet/``,
``unet_ema/``, the EMA and AdamW state of every weight; the LoRA run's (``tft2v.train.lora_checkpoint``) the
adapter, its EMA and AdamW state and a reference to the base. Prints one JSON line.

    python benchmarks/checkpoint_size.py [--threads 2] [--out /tmp/ckpt_size]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_memory import RANK  # noqa: E402
from unet_step import MID  # noqa: E402


def _bytes(folder: Path) -> dict[str, int]:
    """Bytes per top-level entry of a checkpoint folder."""
    return {p.name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
            for p in sorted(folder.iterdir())}


def run(root: Path, name: str, base: Path, lora: bool) -> dict:
    from tft2v.config import load_config
    from tft2v.train import Trainer

    sets = {"out_dir": str(root / name), "data.toy_images": 4, "data.toy_videos": 4, "data.toy_captioned_videos": 0,
            "data.height": 16, "data.width": 16, "data.num_frames": 2, "data.image_batch_size": 1,
            "data.video_batch_size": 1, "model.init": "pretrained", "model.init_path": str(base),
            "model.unet": "{image_embed_dim: null}",  # MID has no image tokens; the toy encoder has an image tower
            "encoder.args": f"{{text_dim: {MID['context_dim']}, image_dim: 32, max_length: 8}}",
            "recipe.image_tokens_on_videos": False, "optim.ema_decay": 0.9999, "train.max_steps": 1,
            "train.checkpoint_every": 0, "train.progress": False, "train.trackers": "[]", "train.export": False}
    if lora:
        sets["model.lora"] = f"{{rank: {RANK}, targets: [temporal]}}"
    trainer = Trainer(load_config(None, [f"{k}={v}" for k, v in sets.items()]))
    trainable = sum(p.numel() for p in trainer.params)
    ckpt = Path(trainer.run()["checkpoint"])
    files = _bytes(ckpt)
    return {"case": name, "trainable_m": round(trainable / 1e6, 3), "bytes": sum(files.values()), "files": files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    import torch

    from tft2v.models import TFT2VUNet

    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="ckpt_size_"))
    try:
        torch.manual_seed(0)
        unet = TFT2VUNet(**{**MID, "in_channels": 3, "out_channels": 3})
        params = sum(p.numel() for p in unet.parameters())
        unet.save_pretrained(root / "base")
        del unet
        full, lora = run(root, "full", root / "base", False), run(root, "lora", root / "base", True)
        print(json.dumps({"benchmark": "checkpoint_size", "config": "mid", "params_m": round(params / 1e6, 1),
                          "ema": True, "lora": {"rank": RANK, "targets": ["temporal"]}, "full": full, "lora_run": lora,
                          "lora_share": round(lora["bytes"] / full["bytes"], 5)}))
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
