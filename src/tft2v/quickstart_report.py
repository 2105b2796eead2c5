"""The quickstart's report: tables of the shapes-world metrics per variant, the paper's four claims
side by side with a verdict computed from the numbers, every sampled clip as its own mp4 with a
manifest, sample filmstrips / GIFs and loss curves.

Clips are (N, 3, F, H, W) in [-1, 1]; pictures and videos are written as uint8 at the I/O edge. This
module sits below :mod:`tft2v.quickstart` (which calls it) and imports nothing from it: what it needs
about a variant travels in ``results``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from tft2v.data import shapes_spec as spec
from tft2v.metrics.stats import paired_difference, wilson_interval


def _fmt(x, pct: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.0f} %" if pct else f"{x:.3f}"


def _uint8(clips: torch.Tensor) -> np.ndarray:
    """(N, 3, F, H, W) in [-1, 1] → (N, F, H, W, 3) uint8."""
    return ((clips.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def filmstrip(clips: torch.Tensor, path: Path, scale: int = 3, frames: int = 8) -> Path:
    """One row per clip, ``frames`` evenly spaced frames per row, upscaled for viewing."""
    from PIL import Image

    arr = _uint8(clips)
    idx = np.linspace(0, arr.shape[1] - 1, frames).round().astype(int)
    pad = 2
    n, _, h, w, _ = arr.shape
    canvas = np.full((n * (h + pad) + pad, frames * (w + pad) + pad, 3), 60, np.uint8)
    for r in range(n):
        for c, f in enumerate(idx):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = arr[r, f]
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)
    return path


def grid_gif(clips: torch.Tensor, path: Path, cols: int = 6, scale: int = 3, fps: int = 8) -> Path:
    """An animated GIF of clips tiled ``cols`` per row."""
    from PIL import Image

    arr = _uint8(clips)
    n, f, h, w, _ = arr.shape
    rows = -(-n // cols)
    frames = []
    for t in range(f):
        canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 60, np.uint8)
        for i in range(n):
            y, x = 2 + (i // cols) * (h + 2), 2 + (i % cols) * (w + 2)
            canvas[y:y + h, x:x + w] = arr[i, t]
        img = Image.fromarray(canvas)
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def loss_plot(run_dirs: dict[str, Path], path: Path) -> Path | None:
    """Training loss per variant (video-branch loss where present, else image-branch loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    plotted = False
    for name, run in run_dirs.items():
        log = run / "metrics.jsonl"
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r]
        for ax, key in zip(axes, ("image/loss", "video/loss")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
                plotted = True
    for ax, title in zip(axes, ("content branch (images) loss", "motion branch (videos) loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path if plotted else None


def _count(results: dict, kind: str) -> int:
    return max(len(r[kind]["clips"]) for r in results.values() if r[kind])


def _per_clip(summary: dict, key: str, moving_only: bool = False) -> list:
    """``key`` of every clip; with ``moving_only``, None for clips without a moving object (a still or
    vanished object is perfectly smooth and consistent, so those measures compare moving clips only)."""
    return [c[key] if not moving_only or c["moving"] else None for c in summary["clips"]]


def _proportion(summary: dict, key: str) -> str:
    """``k/n = p [low, high]`` with a 95 % Wilson interval for a per-clip boolean."""
    flags = [bool(v) for v in _per_clip(summary, key) if v is not None]
    low, high = wilson_interval(sum(flags), len(flags))
    return f"{sum(flags)}/{len(flags)} = {_fmt(sum(flags) / max(1, len(flags)))} [{_fmt(low)}, {_fmt(high)}]"


def _coherence_weight(result: dict) -> float:
    """A variant's coherence-loss weight λ, from its config overrides."""
    return float(result["variant"].overrides.get("recipe", {}).get("coherence_weight", 0.0))


# Held-out combos may trail the seen ones by this much and still "come out right" (3 of 22 clips).
HELD_OUT_MARGIN = 0.15


def claims(results: dict) -> list[tuple[str, str, str]]:
    """(claim, evidence, verdict) from the numbers — nothing hard-coded. Every comparison is paired
    (same prompts and seeds under both models) and counts as shown only when its 95 % bootstrap interval
    excludes zero; proportions carry 95 % Wilson intervals. A clip without an object counts as wrong,
    and measures that a still or vanished object would win (consistency, roughness) compare only clips
    that show a moving object."""
    app = {k: r["appearance"] for k, r in results.items()}
    out = []

    # (1) One change only: text-free videos (λ = 0) against image–text pairs alone.
    base, tf = app["images_only"], app["text_free"]
    coherent = paired_difference(_per_clip(base, "coherent"), _per_clip(tf, "coherent"))
    moving = paired_difference(_per_clip(base, "moving"), _per_clip(tf, "moving"))
    verdict = ("holds" if coherent.positive else
               "partly: objects move, but not steadily in one direction" if moving.positive else
               "not shown at this budget")
    out.append(("(1) text-free videos give coherent motion",
                f"colour×shape prompts, image–text only → {results['text_free']['variant'].title}: coherent-motion "
                f"clips {_proportion(base, 'coherent')} → {_proportion(tf, 'coherent')}, difference {coherent}; "
                f"clips with a moving object {_proportion(base, 'moving')} → {_proportion(tf, 'moving')}, difference "
                f"{moving}; track roughness of moving objects {_fmt(base['moving_smoothness'], False)} → "
                f"{_fmt(tf['moving_smoothness'], False)} px", verdict))

    # (2) Consistency of a moving object: pairs where both clips show one. A static model cannot win by
    # standing still (its clips drop out and the moving-clip count must not fall) or by vanishing (a
    # frame pair without the object scores 0).
    a0, a1 = results["text_free"]["all"], results["tft2v"]["all"]
    lam0, lam1 = _coherence_weight(results["text_free"]), _coherence_weight(results["tft2v"])
    consistency = paired_difference(_per_clip(a0, "object_consistency", True), _per_clip(a1, "object_consistency", True))
    moving = paired_difference(_per_clip(a0, "moving"), _per_clip(a1, "moving"))
    rough = paired_difference(_per_clip(a0, "smoothness", True), _per_clip(a1, "smoothness", True))
    holds = consistency.positive and not moving.negative and not rough.positive
    out.append(("(2) the coherence loss improves frame consistency",
                f"all {a0['num_clips']} prompts/seeds, λ={lam0:g} → λ={lam1:g}: object consistency along the track "
                f"(moving objects) {_fmt(a0['moving_consistency'], False)} → {_fmt(a1['moving_consistency'], False)}, "
                f"paired difference on the {consistency.pairs} pairs where both move {consistency}; clips with a "
                f"moving object {_proportion(a0, 'moving')} → {_proportion(a1, 'moving')}, difference {moving} (must "
                f"not fall); track roughness of moving objects {_fmt(a0['moving_smoothness'], False)} → "
                f"{_fmt(a1['moving_smoothness'], False)} px, difference {rough} (must not rise). Pixel consistency, "
                f"which a frozen or empty clip maximises, is not used: {_fmt(a0['pixel_consistency'], False)} → "
                f"{_fmt(a1['pixel_consistency'], False)}",
                "holds" if holds else "not shown at this budget"))

    d0, d1 = results["tft2v"]["direction"], results["semi_supervised"]["direction"]
    alignment = paired_difference(_per_clip(d0, "direction_alignment"), _per_clip(d1, "direction_alignment"))
    out.append(("(3) captioned videos add text control of motion direction",
                f"on 'moving …' prompts, direction accuracy (chance 25 %) text-free only "
                f"{_proportion(d0, 'direction_correct')} → semi-supervised {_proportion(d1, 'direction_correct')}; "
                f"alignment with the prompted direction (cosine, chance 0) {_fmt(d0['direction_alignment'], False)} → "
                f"{_fmt(d1['direction_alignment'], False)}, difference {alignment}",
                "holds" if alignment.positive else "not shown at this budget"))

    # (4) Held-out combos (appearance only ever seen in images) must come out right — colour and shape
    # above chance with 95 % confidence — AND move coherently (motion learned from videos): clips right
    # and coherent at once above what a model that never saw a video reaches (its coherent rate's upper
    # 95 % bound, so one lucky clip is not enough), both close to seen combos.
    both = results["tft2v"]["all"]
    held = [c for c in both["clips"] if (c["expected"]["colour"], c["expected"]["shape"]) in set(spec.HELD_OUT)]
    seen = [c for c in both["clips"] if c not in held]
    images_only = results["images_only"]["all"]
    no_video = images_only["coherent_fraction"] or 0.0
    _, no_video_high = wilson_interval(round(no_video * images_only["num_clips"]), images_only["num_clips"])
    ok, parts = True, []
    for key, floor, label in (("colour_correct", 1 / len(spec.COLOURS), "colour"),
                              ("shape_correct", 1 / len(spec.SHAPES), "shape"),
                              ("right_and_coherent", no_video_high, "right and moving coherently")):
        h = [bool(c[key]) for c in held]
        s_ = [bool(c[key]) for c in seen]
        low, _ = wilson_interval(sum(h), len(h))
        rate_h, rate_s = sum(h) / max(1, len(h)), sum(s_) / max(1, len(s_))
        ok &= bool(held) and low > floor and rate_h >= rate_s - HELD_OUT_MARGIN
        parts.append(f"{label} {_proportion({'clips': held}, key)} (seen combos {_fmt(rate_s)})")
    out.append(("(4) held-out colour×shape combos still come out right",
                "TF-T2V on combos never seen in any video: " + "; ".join(parts)
                + f"; the image-only model moves coherently in {_fmt(no_video)} of its clips (95 % bound "
                f"{_fmt(no_video_high)}, which held-out right & coherent must exceed)",
                "holds" if ok else "not shown at this budget"))
    return out


# The detector's per-clip verdicts written to the manifest (tft2v.metrics.toy defines each).
MANIFEST_VERDICTS = ("present", "presence", "colour", "shape", "direction", "moving", "coherent", "colour_correct",
                     "shape_correct", "direction_correct", "direction_alignment", "right_and_coherent", "smoothness",
                     "object_consistency", "pixel_consistency", "track")


def _slug(prompt: str) -> str:
    """A file-name part from a caption-grammar prompt: ``"a red circle moving left"`` → ``a-red-circle-moving-left``."""
    return "-".join("".join(ch for ch in word if ch.isalnum()) for word in prompt.lower().split()) or "unconditional"


def _rounded(value):
    """Floats to 4 decimals (a ten-thousandth of a pixel), nested lists included."""
    if isinstance(value, float):
        return round(value, 4)
    return [_rounded(v) for v in value] if isinstance(value, list) else value


def write_clips(out: Path, results: dict, fps: float = 8) -> Path:
    """Every sampled clip as its own video, ``samples/<variant>/<index>_<slug>_s<seed>.mp4``, and one JSON
    line per clip in ``samples/manifest.jsonl``: variant, index, kind of prompt, prompt, seed, path
    (relative to ``out``), the model folder and sampler settings it came from, and the detector's
    verdicts on the clip as sampled (before video compression). Returns the manifest's path."""
    from tft2v.video_export import export_video

    rows = []
    for name, r in results.items():
        verdicts = r["all"]["clips"]
        if not len(r["clips"]) == len(r["prompts"]) == len(r["seeds"]) == len(verdicts):
            raise ValueError(f"{name}: clips, prompts, seeds and verdicts differ in number")
        frames = _uint8(r["clips"])  # one conversion for the whole variant; export_video takes uint8 as is
        num_appearance = len(r["appearance"]["clips"])
        for i, (prompt, seed, clip, verdict) in enumerate(zip(r["prompts"], r["seeds"], frames, verdicts)):
            path = export_video(clip, out / "samples" / name / f"{i:03d}_{_slug(prompt)}_s{seed}.mp4", fps=fps)
            rows.append({"variant": name, "index": i, "kind": "appearance" if i < num_appearance else "direction",
                         "prompt": prompt, "seed": seed, "path": path.relative_to(out).as_posix(),
                         "model": r["train"].get("model"), "sampling": r.get("sampling"),
                         "verdicts": {k: _rounded(verdict[k]) for k in MANIFEST_VERDICTS}})
    manifest = out / "samples" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return manifest


# Content-stage steps of the reference 2-core box's 10-minute run; under half of them is too short to judge.
REFERENCE_CONTENT_STEPS = 750


def slow_machine_note(content_steps: int, minutes: float) -> list[str]:
    """Report lines warning that this run trained too few steps to judge the claims, or none."""
    if content_steps >= REFERENCE_CONTENT_STEPS / 2:
        return []
    longer = math.ceil(minutes * REFERENCE_CONTENT_STEPS / max(content_steps, 1))
    return [f"**Too short to judge the claims:** this machine fitted {content_steps} content-stage steps into "
            f"the budget, against ~{REFERENCE_CONTENT_STEPS} on the reference 2-core box in 10 minutes. "
            f"For a comparable run here: `tft2v quickstart --minutes {longer}`.", ""]


def write_report(out: Path, results: dict, budget, content: dict, seed: int, minutes: float | None, data: dict,
                 plan: str = "default") -> Path:
    """Writes pictures and ``report.md`` into ``out``; returns the report path. ``data`` is the runs'
    ``data`` config section (frame size and count); ``minutes`` None means the fixed plan ``plan`` ran."""
    pics = out / "samples"
    pics.mkdir(exist_ok=True)
    lines = ["# tft2v quickstart: TF-T2V on the shapes world", "",
             f"Offline CPU run ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
             + (f"fixed plan '{plan}' (the same steps and seeds on every machine)" if minutes is None else
                f"budget mode: step counts fitted to {minutes:g} min on this machine")
             + f", seed {seed}. Frames {data['height']}×{data['width']}, "
             f"{data['num_frames']} frames per clip. Held-out combos (never in any video): "
             + ", ".join(f"{c} {s}" for c, s in spec.HELD_OUT) + ".", "",
             *(slow_machine_note(content["steps"], minutes) if minutes is not None else []),
             "## The paper's claims at toy scale", "", "| claim | numbers | verdict |", "|---|---|---|"]
    verdicts = claims(results)
    lines += [f"| {c} | {e} | **{v}** |" for c, e, v in verdicts]
    lines += ["", "## Metrics per variant", "",
              "All variants continue from the same content stage "
              f"({content['steps']} image–text steps) for {budget.variant_steps} steps each, then generate the same "
              f"prompts with the same seeds (DPM-Solver++, {budget.sample_steps} steps, guidance 3): "
              f"{_count(results, 'appearance')} colour×shape clips and {_count(results, 'direction')} 'moving …' clips "
              "per video variant.", "",
              "| variant | object present | colour | shape | moving | coherent motion | track roughness ↓ | "
              "object consistency ↑ | direction (chance 25 %) | direction alignment | held-out colour | "
              "held-out shape | held-out right & coherent | final loss |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a, d, h = r["appearance"], r["direction"] or {}, r["all"]["held_out"]
        lines.append(f"| {r['variant'].title} | {_fmt(a['present_fraction'])} | {_fmt(a['colour_accuracy'])} | "
                     f"{_fmt(a['shape_accuracy'])} | {_fmt(a['moving_fraction'])} | {_fmt(a['coherent_fraction'])} | "
                     f"{_fmt(a['moving_smoothness'], False)} | {_fmt(a['moving_consistency'], False)} | "
                     f"{_fmt(d.get('direction_accuracy'))} | {_fmt(d.get('direction_alignment'), False)} | "
                     f"{_fmt(h['colour_accuracy'])} | {_fmt(h['shape_accuracy'])} | {_fmt(h['right_and_coherent'])} | "
                     f"{r['train']['loss_last']} |")
    lines += ["", "Columns up to 'object consistency' are over the colour×shape clips, direction columns over the "
              "'moving …' clips, held-out columns over both. Metric definitions: tft2v.metrics.toy. An object is "
              "detected only where it stands out from the background as one colourful blob (noise and empty "
              "frames show none), and a clip names a colour, shape or motion only when the object is in at least "
              "half its frames — otherwise it counts as wrong. Colour = nearest palette colour of the object, shape "
              "from fill ratio and mass skew, moving = present in ≥ 75 % of frames and displaced ≥ 0.25 px/frame, "
              "coherent motion = moving steadily in one direction, track roughness = mean |second difference| of "
              "the centroid track in px over moving objects, object consistency = 1 − mean |difference| between "
              "the object's pixels in consecutive frames after shifting by its own step (0 where it is missing), "
              "over moving objects — a still object would win both, so they are measured on moving ones only. "
              "Direction alignment = cosine between the net displacement and the prompted direction, 0 when "
              "the object does not move; held-out right & coherent = colour and shape right and coherent motion "
              "in one clip. Differences are `mean [95 % paired bootstrap interval]`; proportions "
              "`k/n = p [95 % Wilson interval]`. The intervals cover the sampling of evaluation clips from each "
              "trained model, not retraining with another seed.",
              "", "## Samples", ""]
    manifest = write_clips(out, results, fps=data.get("fps", 8))
    lines += [f"Every clip is also its own video, `samples/<variant>/<index>_<prompt>_s<seed>.mp4`, listed with its "
              f"prompt, seed and the detector's verdicts in [{manifest.name}]({manifest.relative_to(out).as_posix()}), "
              "so any clip can be re-scored or regenerated.", ""]
    for name, r in results.items():
        strip = filmstrip(r["clips"][:8], pics / f"{name}.png")
        gif = grid_gif(r["clips"][: len(spec.COLOURS) * len(spec.SHAPES)], pics / f"{name}.gif")
        lines += [f"### {r['variant'].title}", "",
                  f"![{name}]({strip.relative_to(out)}) — animated, all 18 colour×shape prompts: "
                  f"[{gif.name}]({gif.relative_to(out)}); every clip: [samples/{name}/](samples/{name}/)", "",
                  "Prompts (rows): " + "; ".join(r["prompts"][:8]), ""]
    plot = loss_plot({"content": Path(content["checkpoint"]).parents[1],
                      **{n: Path(r["train"]["checkpoint"]).parents[1] for n, r in results.items()}},
                     out / "losses.png")
    if plot:
        lines += ["## Training losses", "", f"![losses]({plot.name})", ""]
    lines += ["## How the time was spent", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in budget.spent.items()]
    lines += ["", f"Calibration: image step {budget.image_step_s:.2f} s, mixed step {budget.mixed_step_s:.2f} s, "
              f"{1000 * budget.sample_s_per_clip_step:.0f} ms per clip and sampling step.", "",
              "Numbers are whatever this run produced; `--minutes N` fits a longer (or shorter) run to N minutes."]
    metrics = {n: {"train": r["train"],
                   **{kind: {k: v for k, v in r[kind].items() if k != "clips"} if r[kind] else None
                      for kind in ("appearance", "direction", "all")}} for n, r in results.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "claims.json").write_text(json.dumps([{"claim": c, "evidence": e, "verdict": v} for c, e, v in verdicts],
                                                indent=2, ensure_ascii=False))
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
