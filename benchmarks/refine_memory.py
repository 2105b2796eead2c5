"""Peak memory of 1280x720-style refinement (TFT2VRefinePipeline) with each memory switch, on a reduced size.

Each setting runs in a fresh child process; on CPU the peak is the RSS added during ``pipe(...)`` (polled
every 2 ms, :class:`low_memory.PeakRSS`), with CUDA ``torch.cuda.max_memory_allocated``. Model: a mid-size
random UNet in the refiner layout (64 channels, mult 1/2/2/2, as SR600's three downsamples) and an 8x
AutoencoderKL of SD's depth (narrow widths), 32 frames, CFG on, 2 inversion + 2 sampling steps (the peak
does not grow with steps). The full 1280x720 x 32 case is part (h) of ``benchmarks/gpu_check.py``.
Prints one JSON line. Usage: ``python benchmarks/refine_memory.py [--frames 32 --size 272x512]``
(the latent height must be 8k + 2: 272 px = 34 latent rows).
"""

from __future__ import annotations

import argparse
import json
import time

from low_memory import PeakRSS, run_children

SETTINGS = {
    "baseline fp32 (VAE on all frames at once)": {},
    "vae chunk 2": {"vae_chunk": 2},
    "vae chunk 2 + tiling": {"vae_chunk": 2, "tiling": True},
    "sequential CFG": {"unet_chunk": 1},
    # bf16 only with CUDA: CPU bf16 convolutions are slower than fp32 by far (the run did not end in 10 min).
    "all switches": {"dtype": "bfloat16", "vae_chunk": 2, "tiling": True, "unet_chunk": 1, "offload": True},
}


def build_pipeline():
    import torch
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import VideoAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.models import TFT2VUNet
    from tft2v.refine_pipeline import TFT2VRefinePipeline
    from tft2v.sampling import build_scheduler

    torch.manual_seed(0)
    unet = TFT2VUNet(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                     attention_scales=(1.0, 0.5, 0.25), head_dim=32, init_temporal_heads=2, context_dim=64,
                     image_embed_dim=None, norm_num_groups=32, condition_channels=0, refiner_layout=True).eval()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4,
                        norm_num_groups=32, sample_size=256).eval()
    pipe = TFT2VRefinePipeline(unet, build_scheduler("ddim"), build_encoder("toy", text_dim=64, image_dim=64),
                               VideoAutoencoder(vae), defaults={"num_frames": 32, "height": 272, "width": 512})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_setting(setting: dict, frames: int, height: int, width: int, steps: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    pipe = build_pipeline()
    dtype = setting.get("dtype", "float32") if cuda else "float32"
    pipe.to(getattr(torch, dtype))
    if setting.get("unet_chunk"):
        pipe.enable_unet_batch_chunking(setting["unet_chunk"])
    if setting.get("tiling"):
        pipe.enable_vae_tiling()
    pipe.enable_model_cpu_offload(device) if setting.get("offload") and cuda else pipe.to(device)
    video = torch.rand(1, 3, frames, height // 2, width // 2) * 2 - 1  # the base stage's half-size clip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        pipe(video, "a red circle moving left", height=height, width=width, num_inference_steps=steps,
             generator=torch.Generator(device=pipe.execution_device).manual_seed(0), output_type="uint8",
             decode_chunk_size=setting.get("vae_chunk", frames))
        seconds = time.perf_counter() - start
    out = {"seconds": round(seconds, 2), "dtype": dtype}
    if cuda:
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_rss_added_mib"] = round(rss.added_bytes / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="272x512", help="HxW (latent height 8k + 2)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(run_setting(SETTINGS[args.child], args.frames, height, width, args.steps)))
        return
    import torch

    results = run_children(__file__, SETTINGS, args)
    print(json.dumps({"benchmark": "refine_memory", "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "torch": torch.__version__, "frames": args.frames, "size": [height, width], "steps": args.steps,
                      "results": results}))


if __name__ == "__main__":
    main()
