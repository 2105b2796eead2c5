"""Train-step cost of the video UNet at the "mid" config, vs diffusers' UNet3DConditionModel.

For each (model, batch) case, in a fresh subprocess (so peak RSS is per case): one fwd+bwd step
timed after a warm-up, FLOPs from ``torch.utils.flop_counter``, and MFU against a dense fp32 matmul
peak measured in the same run. Batches: video (B=2, F=16) and image (B=32, F=1), both 32 frames of a
32×32 latent with a 77×1024 context. Prints one JSON line.

    python benchmarks/unet_step.py [--threads 2] [--repeats 1] [--cases ours-video,ours-image,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MID = dict(model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, attention_scales=(1.0, 0.5, 0.25),
           head_dim=32, init_temporal_heads=4, context_dim=1024, image_embed_dim=None, dropout=0.0)
BATCHES = {"video": (2, 16), "image": (32, 1)}
CASES = ["ours-video", "ours-image", "diffusers3d-video", "diffusers3d-image"]


def build(model_name: str):
    import torch

    torch.manual_seed(0)
    if model_name == "ours":
        from tft2v.models import TFT2VUNet

        return TFT2VUNet(**MID)
    from diffusers import UNet3DConditionModel

    # "attention_head_dim" in UNet3D is the head COUNT and must be one int (its temporal input
    # transformer takes it as-is): 4 heads give 32/64/128-wide heads at the three levels.
    return UNet3DConditionModel(
        block_out_channels=(128, 256, 512), layers_per_block=2, cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock3D",) * 3, up_block_types=("CrossAttnUpBlock3D",) * 3,
        attention_head_dim=4,
    )


def matmul_peak(seconds: float = 3.0) -> float:
    """Dense fp32 matmul FLOP/s on this process's threads (the MFU denominator)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0)


def run_case(case: str, threads: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model_name, batch = case.split("-")
    b, f = BATCHES[batch]
    model = build(model_name).train()
    x = torch.randn(b, 4, f, 32, 32)
    t = torch.randint(0, 1000, (b,))
    ctx = torch.randn(b, 77, 1024)

    def step():
        out = model(x, t, ctx)
        out = out.sample if hasattr(out, "sample") else out
        out.square().mean().backward()
        model.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = matmul_peak()
    step_s = min(times)
    flops = counter.get_total_flops()
    return {"case": case, "batch": b, "frames": f, "step_s": round(step_s, 2), "tflop": round(flops / 1e12, 3),
            "gflops_per_s": round(flops / step_s / 1e9, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
            "mfu": round(flops / step_s / peak, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads, args.repeats)))
        return
    results = []
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "unet_step", "threads": args.threads, "config": "mid", "results": results}))


if __name__ == "__main__":
    main()
