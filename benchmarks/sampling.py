"""Sampling cost vs quality: DDIM-50 (VGen) vs DPM-Solver++-20 on a shapes-world model folder.

Generates the quickstart's prompts (18 colour×shape + 12 directional) with each sampler and the same
seeds, times it, and scores the clips with the analytic shapes-world evaluators. Prints one JSON line.

    python benchmarks/sampling.py MODEL_DIR [--threads 2]    # e.g. quickstart_out/runs/tft2v/model
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tft2v.metrics.toy import evaluate_toy
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.quickstart import appearance_prompts, direction_prompts

    pipe = TFT2VPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    app, dirs = appearance_prompts(), direction_prompts()
    prompts = app + dirs
    results = {}
    for name, steps in (("ddim", 50), ("dpmpp", 20)):
        pipe.set_scheduler(name)
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        t0 = time.perf_counter()
        clips = pipe(prompts, negative_prompt="", num_inference_steps=steps, guidance_scale=args.guidance,
                     generator=gens, output_type="pt")
        seconds = time.perf_counter() - t0
        a, d = evaluate_toy(clips[: len(app)], app), evaluate_toy(clips[len(app):], dirs)
        results[f"{name}-{steps}"] = {
            "seconds": round(seconds, 1), "s_per_clip": round(seconds / len(prompts), 2),
            "colour": a["colour_accuracy"], "shape": a["shape_accuracy"], "coherent": a["coherent_fraction"],
            "roughness_px": round(a["smoothness"], 3) if a["smoothness"] is not None else None,
            "direction": d["direction_accuracy"]}
    print(json.dumps({"benchmark": "sampling", "model": args.model, "clips": len(prompts),
                      "guidance": args.guidance, "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
