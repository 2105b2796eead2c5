"""Claim (5) checked on a quickstart's compositional model folder, from files, with clips outside its plan.

Writes fresh ground-truth shapes-world clips (a seed stream the quickstart never uses, directions balanced)
as mp4 files, then samples the model folder on colour×shape prompts conditioned on each file's motion field
read back from the mp4 — the path ``tft2v generate --motion FILE`` takes (tft2v.condition_io) — and once
through the CLI itself. Every condition file, sampled clip and its ground truth lands in OUT, so a detector
outside the project can re-check it; this script scores them with tft2v's own detector. Prints one JSON line.

    python benchmarks/compositional_check.py quickstart_out/runs/compositional/model --out compositional_check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

# A seed stream no quickstart run draws from (the quickstart: seed, seed + 1 and 10**6 + seed).
FRESH_SEED = 2 * 10**6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, default=Path("compositional_check"))
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--condition", default="motion", choices=["motion", "sketch"])
    args = ap.parse_args()

    from tft2v.condition_io import read_condition_video
    from tft2v.data.toy_files import write_video
    from tft2v.metrics.toy import analyse_clip, score_clip
    from tft2v.metrics.toy_conditions import follow_condition, summarise_following
    from tft2v.quickstart import (QUICKSTART_THREADS, _pipeline, appearance_prompts, condition_clips,
                                  sample_prompts)
    from tft2v.quickstart_report import _uint8

    torch.set_num_threads(QUICKSTART_THREADS)
    pipe = _pipeline(args.model)
    d = pipe.defaults
    data = {"height": d["height"], "width": d["width"], "num_frames": d["num_frames"]}
    sources, truths = condition_clips(args.clips, FRESH_SEED, data)
    args.out.mkdir(parents=True, exist_ok=True)
    files = []
    for j, (clip, truth) in enumerate(zip(_uint8(sources), truths)):
        files.append(args.out / f"condition_{j:03d}_{truth['motion']}.mp4")
        write_video(files[-1], clip, fps=round(d["fps"]))
    read = torch.cat([read_condition_video(f, data["num_frames"], d["fps"], (data["height"], data["width"]),
                                           error=f"cannot read {f}") for f in files])  # (N, 3, F, H, W)
    prompts = (appearance_prompts() * (args.clips // len(appearance_prompts()) + 1))[:args.clips]
    t0 = time.perf_counter()
    clips = {"without": sample_prompts(pipe, prompts, 8, seed=FRESH_SEED),
             "with": sample_prompts(pipe, prompts, 8, seed=FRESH_SEED, condition_videos={args.condition: read})}
    seconds = time.perf_counter() - t0
    scores, rows = {}, []
    for kind, x in clips.items():
        scored = []
        for j, (clip, prompt, truth) in enumerate(zip(x, prompts, truths)):
            c = score_clip(analyse_clip(clip), prompt)
            c.update(follow_condition(c, truth["motion"], truth["track"]))
            scored.append(c)
            path = args.out / f"sample_{kind}_{j:03d}.mp4"
            write_video(path, _uint8(clip[None])[0], fps=round(d["fps"]))
            rows.append({"kind": kind, "prompt": prompt, "seed": FRESH_SEED + j, "path": path.name,
                         "condition_file": files[j].name, "condition_motion": truth["motion"],
                         "condition_track": truth["track"], "follows": c["follows"], "colour": c["colour"]})
        scores[kind] = {**summarise_following(scored),
                        "colour_accuracy": sum(bool(c["colour_correct"]) for c in scored) / len(scored)}
    (args.out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The CLI path once: the same model folder and the first condition file through `tft2v generate`.
    cli = subprocess.run([sys.executable, "-m", "tft2v.cli", "generate", "--model", str(args.model), prompts[0],
                          f"--{args.condition}", str(files[0]), "--scheduler", "dpmpp", "--steps", "8",
                          "--guidance", "3", "--seed", str(FRESH_SEED), "--out", str(args.out / "cli.mp4")],
                         capture_output=True, text=True)
    print(json.dumps({"benchmark": "compositional_check", "model": str(args.model), "condition": args.condition,
                      "clips": args.clips, "sampling_s": round(seconds, 1), "scores": scores,
                      "cli_exit_code": cli.returncode, "cli_output": (cli.stdout + cli.stderr).strip()[-200:]}))


if __name__ == "__main__":
    main()
