"""Train-step memory of the "mid" video UNet: full fine-tune vs temporal LoRA, gradient checkpointing off/on.

Each case runs in a fresh subprocess: build the UNet (``unet_step.MID``), optionally inject a rank-16
adapter on the temporal layers (``tft2v.models.lora.apply_lora``: base frozen), AdamW over the
trainable parameters, then one warm-up and one timed train step (fwd + bwd + optimizer) on a video batch
(B=2, F=16, 32×32 latent, 77×1024 context). Reports peak RSS growth over the built model (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA), the step time and the trainable share. One JSON line.

On the CPU each case runs with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``):
otherwise glibc raises the threshold after the first large frees and later tensors come from the heap,
whose freed pages stay in RSS, so peak RSS measured the allocator's history more than the step's memory
(full fine-tune + checkpointing: 6.49 GiB with the dynamic threshold, 2.84 GiB with the fixed one).

    python benchmarks/lora_memory.py [--threads 2] [--cases full,full-ckpt,lora,lora-ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from low_memory import PeakRSS  # noqa: E402
from unet_step import MID  # noqa: E402

CASES = ["full", "full-ckpt", "lora", "lora-ckpt"]
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # RSS follows the tensors (module docstring)
RANK = 16


def run_case(case: str, threads: int, unet: dict = MID, frames: int = 16, size: int = 32) -> dict:
    import torch

    from tft2v.config import LoraConfig
    from tft2v.models import TFT2VUNet
    from tft2v.models.lora import apply_lora

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = TFT2VUNet(**unet)
    if case.startswith("lora"):
        apply_lora(LoraConfig(rank=RANK, targets=("temporal",)), model)
    if case.endswith("ckpt"):
        model.enable_gradient_checkpointing()
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(2, 4, frames, size, size, device=device)
    t = torch.randint(0, 1000, (2,), device=device)
    ctx = torch.randn(2, 77, unet["context_dim"], device=device)

    def step():
        model(x, t, ctx).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakRSS() as rss:
        step()  # warm-up; AdamW allocates its state here
        t0 = time.perf_counter()
        step()
        step_s = time.perf_counter() - t0
    total = sum(p.numel() for p in model.parameters())
    out = {"case": case, "step_s": round(step_s, 2), "trainable_m": round(sum(p.numel() for p in params) / 1e6, 3),
           "trainable_share": round(sum(p.numel() for p in params) / total, 4),
           "cpu_peak_rss_added_gib": round(rss.added_bytes / 2**30, 2)}
    if device == "cuda":
        out["cuda_max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads)))
        return
    results = []
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True, env=MALLOC_ENV)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "lora_memory", "config": "mid", "batch": "video B=2 F=16", "rank": RANK,
                      "results": results}))


if __name__ == "__main__":
    main()
