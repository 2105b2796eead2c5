"""Peak memory of TFT2VPipeline generation with each memory switch (see tft2v.pipeline's docstring).

Each setting runs in a fresh child process so that peaks do not leak between settings. On CPU the
peak is the process RSS (polled every 2 ms) during ``pipe(...)`` minus the RSS just before it, i.e.
what generation itself adds on top of the loaded weights; with CUDA it is
``torch.cuda.max_memory_allocated`` over the call (weights included, as a GPU user sees it).
Model: a mid-size random TFT2VUNet + an 8× AutoencoderKL, 16 frames at 128×224 (latent 4×16×16×28),
CFG on. Prints one JSON line. Usage: ``python benchmarks/low_memory.py [--frames 16 --size 128x224]``;
``--vgen-unet --size 256x448`` measures one bf16 forward of the VGen-size UNet instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

SETTINGS = {
    "baseline fp32": {},
    "vae decode chunk 2": {"decode_chunk": 2},
    "unet batch chunk 1 (sequential CFG)": {"unet_chunk": 1},
    "bf16": {"dtype": "bfloat16"},
    "all switches": {"dtype": "bfloat16", "decode_chunk": 2, "unet_chunk": 1, "offload": True},
}


def build_pipeline():
    import torch
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import VideoAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.models import TFT2VUNet
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.sampling import build_scheduler

    torch.manual_seed(0)
    unet = TFT2VUNet(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 4), num_res_blocks=1,
                     attention_scales=(1.0, 0.5, 0.25), head_dim=32, init_temporal_heads=2, context_dim=64,
                     image_embed_dim=64, norm_num_groups=32, condition_channels=0).eval()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4,
                        norm_num_groups=32).eval()
    encoder = build_encoder("toy", text_dim=64, image_dim=64)
    pipe = TFT2VPipeline(unet, build_scheduler("ddim"), encoder, VideoAutoencoder(vae))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: ``added_bytes`` = peak RSS (polled every ``interval`` s) above RSS at entry."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.added_bytes = interval, 0

    def __enter__(self):
        self._before, self._peak, self._done = rss_bytes(), 0, threading.Event()
        self._watcher = threading.Thread(target=self._poll, daemon=True)
        self._watcher.start()
        return self

    def _poll(self):
        while not self._done.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._done.set()
        self._watcher.join()
        self.added_bytes = max(0, self._peak - self._before)


def run_setting(setting: dict, frames: int, height: int, width: int, steps: int) -> dict:
    """Child process: build, switch, generate once, report the peak."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    pipe = build_pipeline()
    if "dtype" in setting:
        pipe.to(getattr(torch, setting["dtype"]))
    if setting.get("unet_chunk"):
        pipe.enable_unet_batch_chunking(setting["unet_chunk"])
    if setting.get("offload") and cuda:
        pipe.enable_model_cpu_offload(device)
    else:
        pipe.to(device)
    kwargs = dict(num_frames=frames, height=height, width=width, num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(0), output_type="uint8",
                  decode_chunk_size=setting.get("decode_chunk", frames))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        pipe("a red circle moving left", **kwargs)
        seconds = time.perf_counter() - start
    result = {"seconds": round(seconds, 2), "offload": bool(setting.get("offload") and cuda)}
    if cuda:
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        result["peak_rss_added_mib"] = round(rss.added_bytes / 2**20, 1)
    return result


def vgen_unet_forward(frames: int, height: int, width: int) -> dict:
    """VGen-size UNet (1.4 B parameters, default TFT2VUNet config) in bf16: one forward at batch 1 — what
    the GPU holds while denoising with CPU offload + sequential CFG (encoder and VAE are off the device)."""
    import torch

    from tft2v.models import TFT2VUNet

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    unet = TFT2VUNet().eval().to(device=device, dtype=torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    x = torch.randn(1, 4, frames, height // 8, width // 8, device=device)
    text = torch.randn(1, 77, 1024, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS(interval=0.005) as rss, torch.no_grad():
        start = time.perf_counter()
        unet(x, torch.tensor([981], device=device), text)
        seconds = time.perf_counter() - start
    out = {"parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
           "weights_mib": round(weights / 2**20, 1), "seconds": round(seconds, 1)}
    if cuda:
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["forward_rss_added_mib"] = round(rss.added_bytes / 2**20, 1)
    return out


def run_children(script: str, settings: dict, args) -> dict:
    """Each setting's JSON result from a fresh ``script --child NAME`` process (so peaks do not leak)."""
    results = {}
    for name in settings:
        out = subprocess.run([sys.executable, script, "--child", name, "--frames", str(args.frames),
                              "--size", args.size, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", default="128x224", help="HxW")
    parser.add_argument("--steps", type=int, default=2, help="peak memory does not grow with steps")
    parser.add_argument("--vgen-unet", action="store_true",
                        help="instead: one bf16 forward of the VGen-size UNet (use --size 256x448)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    if args.vgen_unet:
        print(json.dumps({"benchmark": "low_memory_vgen_unet", "frames": args.frames, "size": [height, width],
                          **vgen_unet_forward(args.frames, height, width)}))
        return
    if args.child:
        print(json.dumps(run_setting(SETTINGS[args.child], args.frames, height, width, args.steps)))
        return
    import torch

    results = run_children(__file__, SETTINGS, args)
    print(json.dumps({"benchmark": "low_memory", "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "torch": torch.__version__, "frames": args.frames, "size": [height, width],
                      "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
