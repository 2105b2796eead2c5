"""Four-step shapes world: consistency distillation of the quickstart's TF-T2V model (issue 32), a fixed plan.

1. Teacher: the quickstart's default plan, TF-T2V variant — content stage (750 image steps, seed 0), then
   250 steps of image–text pairs + text-free videos with the coherence loss (λ = 1, seed 1). Reused when
   ``OUT/teacher/tft2v/model`` exists (or ``--teacher DIR``).
2. Students (``tft2v distill``'s trainer, full weights, EMA target 0.95, pseudo-Huber c = 0.001, DDIM grid 50,
   w = 2, i.e. the quickstart's sampling guidance 3 = 1 + w), from the teacher, ``--steps`` steps each:
   * ``mixed``: image–text pairs + text-free clips (image tokens and image-token guidance), ``data.ratio [1, 1]``;
   * ``images_only``: image–text pairs only, ``data.ratio [1, 0]`` — the same steps and image batch.
   The mixed run also keeps its checkpoint at ½ of the steps (mid-schedule: the LR decays over the whole run);
   stage ``mixed_2x`` distils a third student for 2× the steps, the curve's last point.
3. Scoring, on the quickstart's prompts and seeds (18 colour×shape prompts × 2 seeds, 12 directional × 4;
   seeds 1000 + i), by the shapes-world detector: object present, colour, shape, moving, coherent motion, and a
   toy FVD — the Fréchet distance to 512 ground-truth shapes-world clips in a fixed feature space (each clip's
   8×8-pixel block means: the mean frame and the mean absolute frame difference, 96 numbers). Students at 1, 2,
   4 steps (LCMScheduler, no CFG pass); the teacher at 4 and 8 DPM-Solver++ steps and 50 DDIM steps with CFG 3.
   UNet evaluations and wall time per clip for each row.

Prints one JSON line (every row, the wall times, the plan) and a markdown table. Stages can run side by side
(each in its own process, one torch thread each: on a shared 2-core box two threads per process ran 4× slower):

    python benchmarks/distill_demo.py --out distill_demo                        # all but mixed_2x, in turn
    python benchmarks/distill_demo.py --out distill_demo --stage teacher [--content QUICKSTART/runs/content/model]
    python benchmarks/distill_demo.py --out distill_demo --stage mixed       # | images_only | mixed_2x, then:
    python benchmarks/distill_demo.py --out distill_demo --stage score
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

W = 2.0  # LCM's w: the teacher's guidance 1 + w = 3, the quickstart's sampling guidance
SAMPLE_SEED = 1000  # the quickstart's (seed 0): clip i uses seed 1000 + i
REFERENCE_CLIPS = 512
BLOCK = 8  # toy-FVD feature pooling, pixels


def train_teacher(out: Path, log, content_model: Path | None = None) -> Path:
    """The quickstart's default-plan TF-T2V model (content stage — or ``content_model``, one already trained —
    then the ``tft2v`` variant)."""
    from tft2v.quickstart import BASE_CONFIG, CONTENT_STAGE, PLANS, VARIANTS, _train, merge_config, variant_config

    plan = PLANS["default"]
    content = out / "content"
    if content_model is not None:
        content = content_model.parent
    elif not (content / "model" / "model_index.json").is_file():
        log(f"teacher: content stage, {plan.content_steps} steps")
        _train(merge_config(merge_config(BASE_CONFIG, CONTENT_STAGE), {
            "seed": 0, "out_dir": str(content), "train": {"max_steps": plan.content_steps}}), log)
    variant = next(v for v in VARIANTS if v.name == "tft2v")
    log(f"teacher: {variant.title}, {plan.variant_steps} steps")
    summary = _train(variant_config(BASE_CONFIG, variant, content / "model", plan.variant_steps, 1, out / "tft2v"), log)
    return Path(summary["model"])


def distill_config(teacher: Path, out: Path, steps: int, ratio: list[int], lr: float, keep: list[int]):
    """The student's config: the quickstart's data and batches, the distillation plan."""
    from tft2v.config import config_from_dict
    from tft2v.quickstart import BASE_CONFIG, merge_config

    base = {k: v for k, v in BASE_CONFIG.items() if k not in ("model",)}
    return config_from_dict(merge_config(base, {
        "seed": 2, "out_dir": str(out),
        "data": {"ratio": ratio},
        "model": {"init": "pretrained", "init_path": str(teacher)},
        "recipe": {"text_dropout": 0.0, "image_token_dropout": 0.0, "coherence_weight": 0.0},
        "optim": {"lr": lr, "warmup_steps": 20, "ema_decay": 0.0},
        "train": {"max_steps": steps, "checkpoint_every": keep[0], "keep_last": 1 + len(keep), "export": True,
                  "validation_prompts": ["a red circle", "a blue square moving left"], "validation_frames": 8},
        "distill": {"teacher": str(teacher), "guidance_w": W, "ddim_steps": 50, "target": "ema",
                    "target_decay": 0.95, "loss": "huber", "huber_c": 0.001},
    }))


def distill_run(teacher: Path, out: Path, steps: int, ratio: list[int], lr: float, log) -> dict:
    from tft2v.quickstart import _quiet
    from tft2v.train.distill_trainer import distill

    cfg = distill_config(teacher, out, steps, ratio, lr, [max(1, steps // 2)])
    t0 = time.perf_counter()
    with _quiet(out):
        summary = distill(cfg, overwrite=True)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    log(f"  {out.name}: {steps} steps in {summary['wall_s']} s, loss {summary['loss_first']} -> {summary['loss_last']}")
    return summary


def toy_features(clips: torch.Tensor) -> np.ndarray:
    """(N, 3, F, H, W) in [-1, 1] → (N, 96): BLOCK×BLOCK block means of the mean frame and of |Δframe|."""
    x = (clips.float() + 1) / 2
    pool = torch.nn.functional.avg_pool3d
    mean = pool(x.mean(dim=2, keepdim=True), (1, BLOCK, BLOCK)).flatten(1)
    motion = pool(x.diff(dim=2).abs().mean(dim=2, keepdim=True), (1, BLOCK, BLOCK)).flatten(1)
    return torch.cat([mean, motion], dim=1).double().numpy()


def toy_fvd(a: np.ndarray, b: np.ndarray) -> float:
    from tft2v.metrics import frechet_distance

    return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def reference_features() -> np.ndarray:
    """Ground truth: captioned shapes-world clips (moving objects, the quickstart's 8 frames of 32 px)."""
    from tft2v.data import shapes_spec as spec
    from tft2v.data.toy import ToyWorld, generate, to_pixels
    from tft2v.quickstart import QUICKSTART_FRAMES

    world = ToyWorld(size=spec.FRAME_SIZE, frames=QUICKSTART_FRAMES)
    gt = generate("captioned_videos", REFERENCE_CLIPS, seed=12345, world=world)
    return toy_features(torch.stack([to_pixels(f) for f in gt.frames]))


def score(model: Path, scheduler: str, steps: int, guidance: float, prompts: tuple, reference: np.ndarray) -> dict:
    """Sample the quickstart's prompts and seeds; detector scores, toy FVD, UNet calls and seconds per clip."""
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.quickstart import _evaluate

    pipe = TFT2VPipeline.from_pretrained(model)
    pipe.set_scheduler(scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, **kw: calls.append(x.shape[0]) or forward(x, t, **kw)
    appearance, directed = prompts
    everything = appearance + directed
    t0 = time.perf_counter()
    out = []
    for start in range(0, len(everything), 15):
        part = everything[start:start + 15]
        gens = [torch.Generator().manual_seed(SAMPLE_SEED + start + i) for i in range(len(part))]
        out.append(pipe(part, negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                        generator=gens, output_type="pt"))
    seconds = time.perf_counter() - t0
    clips = torch.cat(out)
    a = _evaluate(clips, appearance, directed)["appearance"]
    return {"present": a["present_fraction"], "colour": a["colour_accuracy"], "shape": a["shape_accuracy"],
            "moving": a["moving_fraction"], "coherent": a["coherent_fraction"],
            "toy_fvd": toy_fvd(toy_features(clips), reference),
            "unet_evals_per_clip": sum(calls) / len(everything), "seconds_per_clip": seconds / len(everything)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("distill_demo"))
    ap.add_argument("--teacher", type=Path, help="a teacher model folder (default: train the quickstart's)")
    ap.add_argument("--steps", type=int, default=200, help="distillation steps of the plan")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="", help="score only the rows whose 'model sampler steps' contains this (score stages "
                    "side by side share the per-row cache)")
    ap.add_argument("--content", type=Path, help="the quickstart's content-stage model folder (default: train it)")
    ap.add_argument("--stage", choices=["all", "teacher", "mixed", "images_only", "mixed_2x", "score"], default="all",
                    help="run one stage (stages run side by side reuse each other's folders)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tft2v.quickstart import EVAL_SEEDS, evaluation_prompts

    def log(msg):
        print(msg, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    wall = {}
    t0 = time.perf_counter()
    teacher = args.teacher or args.out / "teacher" / "tft2v" / "model"
    if not (teacher / "model_index.json").is_file() and args.stage in ("all", "teacher"):
        teacher = train_teacher(args.out / "teacher", log, args.content)
        wall["teacher_s"] = round(time.perf_counter() - t0, 1)
    # The plan's two students; the mixed one at 2x the steps is its curve's third point (stage mixed_2x).
    students = {"mixed": ([1, 1], args.steps), "images_only": ([1, 0], args.steps), "mixed_2x": ([1, 1], 2 * args.steps)}
    for name, (ratio, steps) in students.items():
        if args.stage == name or (args.stage == "all" and name != "mixed_2x"):
            log(f"distilling {name} (data.ratio {ratio}), {steps} steps")
            summary = distill_run(teacher, args.out / name, steps, ratio, args.lr, log)
            wall[f"distill_{name}_s"] = summary["wall_s"]
            (args.out / f"{name}_wall.json").write_text(json.dumps(summary))
    if args.stage not in ("all", "score"):
        print(json.dumps({"stage": args.stage, "wall": wall}))
        return
    for name in students:
        if (args.out / f"{name}_wall.json").is_file():
            wall[f"distill_{name}_s"] = json.loads((args.out / f"{name}_wall.json").read_text())["wall_s"]

    prompts = evaluation_prompts("tft2v", EVAL_SEEDS)
    reference = reference_features()
    half = args.out / "mixed" / "checkpoints" / f"step-{max(1, args.steps // 2):08d}"
    half_model = args.out / "mixed_half_model"
    if (args.out / "mixed" / "model" / "model_index.json").is_file() and not half_model.is_dir():
        from direction_curve import model_at  # a sibling script: this one runs from benchmarks/

        model_at(args.out / "mixed" / "model", half, half_model)
    rows = [("teacher", "DDIM, CFG 3", teacher, "ddim", 50, 3.0),
            ("teacher", "DPM-Solver++, CFG 3", teacher, "dpmpp", 8, 3.0),
            ("teacher", "DPM-Solver++, CFG 3", teacher, "dpmpp", 4, 3.0)]
    for k in (1, 2, 4):
        rows.append((f"student, mixed, {args.steps} steps", "LCM", args.out / "mixed" / "model", "lcm", k, 1.0))
    rows.append((f"student, images only, {args.steps} steps", "LCM", args.out / "images_only" / "model", "lcm", 4, 1.0))
    rows.append((f"student, mixed, {args.steps // 2} steps", "LCM", half_model, "lcm", 4, 1.0))
    if (args.out / "mixed_2x" / "model" / "model_index.json").is_file():
        rows.append((f"student, mixed, {2 * args.steps} steps", "LCM", args.out / "mixed_2x" / "model", "lcm", 4, 1.0))
    results = []
    cache = args.out / "scores"
    cache.mkdir(exist_ok=True)
    for model_name, sampler, folder, scheduler, steps, guidance in rows:
        # Each row's scores are kept: a score stage run while students still train scores what exists.
        row_file = cache / ("_".join("".join(c if c.isalnum() else " " for c in f"{model_name} {sampler} {steps}")
                                     .split()) + ".json")
        if args.rows not in f"{model_name} {sampler} {steps}":
            continue
        if row_file.is_file():
            r = json.loads(row_file.read_text())
        elif (Path(folder) / "model_index.json").is_file():
            t1 = time.perf_counter()
            r = score(folder, scheduler, steps, guidance, prompts, reference)
            row_file.write_text(json.dumps(r))
            log(f"  {model_name} {sampler} {steps} steps: " + ", ".join(
                f"{k} {v:.3f}" for k, v in r.items()) + f" ({time.perf_counter() - t1:.0f} s)")
        else:
            log(f"  {model_name}: no model folder yet ({folder}), row left out")
            continue
        results.append({"model": model_name, "sampler": sampler, "steps": steps, **r})
    wall["total_s"] = round(time.perf_counter() - t0, 1)
    plan = {"steps": args.steps, "lr": args.lr, "w": W, "threads": args.threads, "seed": 2,
            "teacher": str(teacher), "clips_per_row": len(prompts[0]) + len(prompts[1])}
    print(json.dumps({"plan": plan, "wall": wall, "rows": results}))
    print("\n| model | sampler | steps | UNet evals / clip | s / clip | object | colour | shape | moving | coherent "
          "| toy FVD |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['unet_evals_per_clip']:.0f} | "
              f"{r['seconds_per_clip']:.3f} | {r['present']:.0%} | {r['colour']:.0%} | {r['shape']:.0%} | "
              f"{r['moving']:.0%} | {r['coherent']:.0%} | {r['toy_fvd']:.3f} |")


if __name__ == "__main__":
    main()
