"""A refinement stage on the shapes world (issue 30): trained from text-free 64×64 clips, it refines the
quickstart model's 32×32 samples, upsampled, to 64×64; judged against plain bicubic upsampling.

Fixed plan (:data:`PLAN`): the refiner starts from the quickstart's TF-T2V model folder (``--base``, default
``quickstart_out/runs/tft2v/model``: run ``make quickstart`` first) and trains with ``recipe.refine`` on
text-free 64×64 × 8-frame clips (motion branch, image tokens of the middle frame), t in [0, strength·T), on the
refine sampler's ``logsnr_cosine_interp`` schedule. The base then samples the quickstart's prompts (every
colour×shape and the 'moving …' prompts, one seed each, DPM-Solver++ 8 steps, guidance 3); each clip is
upsampled bicubic to 64×64 and, separately, refined by :class:`tft2v.refine_pipeline.TFT2VRefinePipeline`
(VGen's inversion + DPM-Solver++ SDE) at the same strength. Both are scored at 64×64 with the shapes-world
detector (present, colour, shape against the prompt), edge sharpness (:mod:`tft2v.metrics.toy_sharpness`)
and the track: the refined clip's centroid against the bicubic clip's, frame by frame (within 1 px).
Ground-truth 64×64 clips give the sharpness a real edge has. Writes a filmstrip PNG and prints one JSON line.

Usage:  python benchmarks/refine_demo.py [--base quickstart_out/runs/tft2v/model] [--out refine_demo_out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PLAN = {"size": 64, "base_size": 32, "frames": 8, "steps": 200, "video_batch": 2, "lr": 1e-3, "warmup": 20,
        "strength": 0.5, "refine_steps": 6, "guidance": 3.0, "guidance_rescale": 0.3, "sample_steps": 8,
        "seed": 0, "sample_seed": 1000, "truth_clips": 32}


def refiner_config(base: Path, out: Path, steps: int) -> dict:
    """The quickstart's model settings, continued from ``base`` as a refinement stage on 64×64 clips."""
    from tft2v.quickstart import BASE_CONFIG, merge_config

    p = PLAN
    return merge_config(BASE_CONFIG, {
        "seed": p["seed"], "out_dir": str(out),
        "data": {"ratio": [0, 1], "height": p["size"], "width": p["size"], "num_frames": p["frames"],
                 "toy_images": 16, "toy_videos": 800, "toy_captioned_videos": 0, "labelled_ratio": 0.0,
                 "toy_object_size": [12, 24], "video_batch_size": p["video_batch"]},
        "model": {"init": "pretrained", "init_path": str(base)},
        "schedule": {"beta_schedule": "logsnr_cosine_interp", "zero_terminal_snr": False},
        "recipe": {"coherence_weight": 0.0, "refine": {"enabled": True, "base_height": p["base_size"],
                                                       "base_width": p["base_size"], "strength": p["strength"]}},
        "optim": {"lr": p["lr"], "warmup_steps": p["warmup"], "ema_decay": 0.0},
        "train": {"max_steps": steps, "validation_prompts": [], "export": True},
    })


def bicubic(clips: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, F, h, w) → (N, 3, F, size, size), bicubic, clamped to [-1, 1]."""
    n, c, f = clips.shape[:3]
    frames = clips.transpose(1, 2).reshape(n * f, c, *clips.shape[-2:])
    up = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    return up.reshape(n, f, c, size, size).transpose(1, 2)


def track_agreement(a: list[dict], b: list[dict]) -> dict:
    """Centroid distance per frame where both clips show the object: share within 1 px, mean, and the share of
    clips (present in both) whose every such frame is within 1 px."""
    distances, clips_within = [], []
    for x, y in zip(a, b):
        if not (x["present"] and y["present"]):
            continue
        d = [float(np.hypot(p[0] - q[0], p[1] - q[1])) for p, q in zip(x["track"], y["track"])
             if p is not None and q is not None]
        distances += d
        clips_within.append(bool(d) and max(d) <= 1.0)
    d = np.array(distances)
    return {"frames": int(d.size), "within_1px": float((d <= 1.0).mean()) if d.size else None,
            "mean_px": float(d.mean()) if d.size else None, "clips": len(clips_within),
            "clips_within_1px": float(np.mean(clips_within)) if clips_within else None}


def score(clips: torch.Tensor, prompts: list[str]) -> dict:
    from tft2v.metrics.toy import evaluate_toy
    from tft2v.metrics.toy_sharpness import clip_sharpness

    result = evaluate_toy(clips, prompts)
    sharp = [s for s in (clip_sharpness(c) for c in clips) if s is not None]
    return {"present": result["present_fraction"], "colour": result["colour_accuracy"],
            "shape": result["shape_accuracy"], "moving": result["moving_fraction"],
            "sharpness": float(np.mean(sharp)) if sharp else None,
            "clips": result["clips"]}


def filmstrip(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of clips (3, F, H, W) side by side, frames left to right, as one PNG."""
    from PIL import Image

    strips = [torch.cat(list(r.permute(1, 2, 3, 0)), dim=1) for r in rows]  # (H, F·W, 3) each
    image = ((torch.cat(strips, dim=0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(image).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("quickstart_out/runs/tft2v/model"))
    ap.add_argument("--out", type=Path, default=Path("refine_demo_out"))
    ap.add_argument("--steps", type=int, default=PLAN["steps"], help="refiner training steps (the plan: 200)")
    ap.add_argument("--filmstrip", type=Path, default=Path(__file__).with_name("refine_demo.png"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (float results depend on it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.base / "model_index.json").is_file():
        raise SystemExit(f"--base {args.base}: not a model folder; run `make quickstart` first")

    from tft2v.config import config_from_dict
    from tft2v.data.toy import ToyWorld, generate
    from tft2v.metrics.toy_sharpness import clip_sharpness
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.quickstart import appearance_prompts, direction_prompts, sample_prompts
    from tft2v.refine_pipeline import TFT2VRefinePipeline
    from tft2v.train.trainer import train

    p = PLAN
    t0 = time.perf_counter()
    summary = train(config_from_dict(refiner_config(args.base, args.out / "refiner", args.steps)), overwrite=True)
    train_s = time.perf_counter() - t0

    prompts = appearance_prompts() + direction_prompts()
    base = TFT2VPipeline.from_pretrained(args.base).set_scheduler("dpmpp")
    base.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    low = sample_prompts(base, prompts, p["sample_steps"], p["sample_seed"])  # (N, 3, F, 32, 32)
    sample_s = time.perf_counter() - t0

    up = bicubic(low, p["size"])
    refiner = TFT2VRefinePipeline.from_pretrained(args.out / "refiner" / "model")
    t0 = time.perf_counter()
    refined = torch.cat([
        refiner(low[i:i + 6], prompts[i:i + 6], negative_prompt="", strength=p["strength"], height=p["size"],
                width=p["size"], num_inference_steps=p["refine_steps"], guidance_scale=p["guidance"],
                guidance_rescale=p["guidance_rescale"], output_type="pt",
                generator=torch.Generator().manual_seed(p["sample_seed"] + i))
        for i in range(0, len(prompts), 6)])
    refine_s = time.perf_counter() - t0

    world = ToyWorld(size=p["size"], frames=p["frames"], size_range=(12, 24))
    truth = generate("videos", p["truth_clips"], seed=7, world=world)
    truth_sharp = np.mean([clip_sharpness(truth.sample(i)["pixels"]) for i in range(len(truth))])
    s_up, s_ref = score(up, prompts), score(refined, prompts)
    tracks = track_agreement(s_up["clips"], s_ref["clips"])
    show = [0, 7, len(prompts) - 1]
    filmstrip([row for i in show for row in (up[i], refined[i])], args.filmstrip)
    out = {
        "plan": p, "base": str(args.base), "clips": len(prompts), "train_steps": summary["steps"],
        "train_s": round(train_s, 1), "base_sample_s": round(sample_s, 1), "refine_s": round(refine_s, 1),
        "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
        "bicubic": {k: v for k, v in s_up.items() if k != "clips"},
        "refined": {k: v for k, v in s_ref.items() if k != "clips"},
        "ground_truth_sharpness": round(float(truth_sharp), 4), "track": tracks,
        "filmstrip": str(args.filmstrip), "threads": args.threads,
    }
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
