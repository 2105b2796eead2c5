"""Learning curve of text control of motion: direction accuracy of the quickstart's semi-supervised
variant against its training steps.

Trains (or reuses) the quickstart's content stage, then the semi-supervised variant (TF-T2V + captioned
videos) for ``--steps`` steps with a checkpoint every ``--every``; each checkpoint samples the
quickstart's 12 'moving …' prompts × ``--seeds`` seeds (DPM-Solver++, the quickstart's steps and
guidance) and is scored by the shapes-world detector. Prints one JSON line and writes a plot.

    python benchmarks/direction_curve.py --out curve --steps 2000 --every 250 [--frame-positions]
    python benchmarks/direction_curve.py --content quickstart_out/runs/content/model ...

The UNet options (``--frame-positions``, ``--temporal-text-attention``) apply to both stages; a ``--content``
model trained without one takes it on as a zero-initialised no-op (``TFT2VUNet.with_options``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def model_at(final_model: Path, checkpoint: Path, dest: Path) -> Path:
    """A model folder with ``checkpoint``'s UNet weights and the final model's other parts."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(final_model, dest, ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(checkpoint / "unet", dest / "unet")
    return dest


def plot_curve(curve: list[dict], path: Path, options: dict, labelled_ratio: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["direction"] for c in curve], "o-", label="direction accuracy")
    ax.plot(steps, [c["coherent"] for c in curve], "s--", label="coherent motion")
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (direction)")
    ax.set_xlabel("semi-supervised steps")
    ax.set_ylim(0, 1)
    switched = ", ".join(k.replace("_", " ") for k, on in options.items() if on) or "VGen anatomy"
    ax.set_title(f"{switched}, {labelled_ratio:.0%} of video slots captioned", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="direction_curve")
    ap.add_argument("--content", help="a content-stage model folder (default: train one)")
    ap.add_argument("--content-steps", type=int, default=750)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--labelled-ratio", type=float, default=0.5, help="share of video slots with a caption")
    ap.add_argument("--frame-positions", action="store_true", help="model.unet.frame_positions (off in VGen)")
    ap.add_argument("--temporal-text-attention", action="store_true",
                    help="model.unet.temporal_text_attention (off in VGen)")
    ap.add_argument("--seeds", type=int, default=4, help="samples per 'moving …' prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tft2v import quickstart as q

    out = Path(args.out)
    options = {"frame_positions": args.frame_positions, "temporal_text_attention": args.temporal_text_attention}
    base = q.merge_config(q.BASE_CONFIG, {"model": {"unet": options}})
    t0 = time.perf_counter()
    content = args.content
    if content is None:
        content = q._train(q.merge_config(q.merge_config(base, q.CONTENT_STAGE), {
            "seed": args.seed, "out_dir": str(out / "content"), "train": {"max_steps": args.content_steps}}), print)["model"]
    variant = next(v for v in q.VARIANTS if v.name == "semi_supervised")
    cfg = q.variant_config(base, variant, content, args.steps, args.seed + 1, out / "semi_supervised")
    cfg = q.merge_config(cfg, {"data": {"labelled_ratio": args.labelled_ratio},
                               "train": {"checkpoint_every": args.every, "keep_last": args.steps // args.every + 1}})
    summary = q._train(cfg, print)
    train_s = time.perf_counter() - t0

    prompts = q.direction_prompts() * args.seeds
    captioned_per_step = cfg["data"]["video_batch_size"] * args.labelled_ratio
    curve = []
    for ckpt in sorted((out / "semi_supervised" / "checkpoints").glob("step-*")):
        step = int(ckpt.name.split("-")[1])
        model = model_at(Path(summary["model"]), ckpt, out / "models" / ckpt.name)
        clips = q.sample_prompts(q._pipeline(model), prompts, q.MIN_SAMPLE_STEPS, seed=1000 * (args.seed + 1))
        d = q._evaluate(clips, [], prompts)["direction"]
        curve.append({"step": step, "captioned_clips": round(step * captioned_per_step),
                      "direction": round(d["direction_accuracy"], 3), "alignment": round(d["direction_alignment"], 3),
                      "moving": round(d["moving_fraction"], 3), "coherent": round(d["coherent_fraction"], 3),
                      "colour": round(d["colour_accuracy"], 3), "shape": round(d["shape_accuracy"], 3)})
        print(json.dumps(curve[-1]), flush=True)
        shutil.rmtree(model)

    plot_curve(curve, out / "direction_curve.png", options, args.labelled_ratio)
    print(json.dumps({"benchmark": "direction_curve", **options,
                      "labelled_ratio": args.labelled_ratio, "content": str(content), "steps": args.steps,
                      "clips_per_point": len(prompts), "train_s": round(train_s), "curve": curve}))


if __name__ == "__main__":
    main()
