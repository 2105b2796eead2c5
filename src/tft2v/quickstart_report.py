"""The quickstart's report: tables of the shapes-world metrics per variant, the paper's five claims
side by side with a verdict computed from the numbers (:mod:`tft2v.quickstart_claims`), every sampled
clip as its own mp4 with a manifest, sample filmstrips / GIFs and loss curves.

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
from tft2v.metrics.toy_conditions import TRACK_TOLERANCE, summarise_following
from tft2v.quickstart_claims import claims, fmt


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
    line per clip in ``samples/manifest.jsonl``: variant, index, kind ("appearance", "direction", or the
    condition it was sampled with), prompt, seed, path (relative to ``out``), the model folder and sampler
    settings it came from, and the detector's verdicts on the clip as sampled (before video compression).
    A conditioned clip's row also names its condition clip, written to ``samples/conditions/``, with that
    clip's direction and track, so the claim can be re-checked from the files. Returns the manifest's path."""
    from tft2v.video_export import export_video

    rows = []
    for name, r in results.items():
        verdicts = r["all"]["clips"]
        if not len(r["clips"]) == len(r["prompts"]) == len(r["seeds"]) == len(verdicts) == len(r["kinds"]):
            raise ValueError(f"{name}: clips, prompts, seeds, kinds and verdicts differ in number")
        sources = _write_condition_clips(out, r, fps) if "condition_clips" in r else []
        frames = _uint8(r["clips"])  # one conversion for the whole variant; export_video takes uint8 as is
        for i, (prompt, seed, clip, verdict) in enumerate(zip(r["prompts"], r["seeds"], frames, verdicts)):
            path = export_video(clip, out / "samples" / name / f"{i:03d}_{_slug(prompt)}_s{seed}.mp4", fps=fps)
            row = {"variant": name, "index": i, "kind": r["kinds"][i], "prompt": prompt, "seed": seed,
                   "path": path.relative_to(out).as_posix(), "model": r["train"].get("model"),
                   "sampling": r.get("sampling"), "verdicts": {k: _rounded(verdict[k]) for k in MANIFEST_VERDICTS}}
            source = r.get("condition_index", [None] * len(frames))[i]
            if source is not None:
                row["condition_clip"] = sources[source]
                row["verdicts"].update({k: _rounded(verdict[k]) for k in ("follows", "on_track", "track_error")})
            rows.append(row)
    manifest = out / "samples" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return manifest


def _write_condition_clips(out: Path, result: dict, fps: float) -> list[dict]:
    """The ground-truth clips conditions were extracted from, as ``samples/conditions/<j>_<motion>.mp4``;
    per clip its path, direction and centroid track."""
    from tft2v.video_export import export_video

    sources = result["condition_clips"]
    rows = []
    for j, (clip, truth) in enumerate(zip(_uint8(sources["clips"]), sources["truth"])):
        path = export_video(clip, out / "samples" / "conditions" / f"{j:03d}_{truth['motion']}.mp4", fps=fps)
        rows.append({"path": path.relative_to(out).as_posix(), "motion": truth["motion"], "track": truth["track"]})
    return rows


def _conditioned_table(result: dict) -> list[str]:
    """The compositional model's clips without and with each condition: appearance and following."""
    lines = ["| sampled | clips | object present | colour | shape | moves in the condition's direction (chance 25 %) | "
             "on the condition's track | track error (px) |", "|---|---|---|---|---|---|---|---|"]
    for name, clips in result["conditioned"].items():
        n = len(clips)
        f = summarise_following(clips)
        lines.append(f"| {'without a condition' if name == 'none' else f'with the {name} condition'} | {n} | "
                     f"{fmt(sum(c['present'] for c in clips) / n)} | {fmt(sum(bool(c['colour_correct']) for c in clips) / n)} | "
                     f"{fmt(sum(bool(c['shape_correct']) for c in clips) / n)} | {fmt(f['follow_accuracy'])} | "
                     f"{fmt(f['on_track_fraction'])} | {fmt(f['track_error'], False)} |")
    return lines


# Content-stage steps of the reference 2-core box's 10-minute run; under half of them is too short to judge.
REFERENCE_CONTENT_STEPS = 600


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
              f"({content['steps']} image–text steps) for {budget.variant_steps} steps each (the compositional "
              f"one from the TF-T2V variant's model, for {budget.compositional_steps} steps), then generate the "
              f"same prompts with the same seeds (DPM-Solver++, {budget.sample_steps} steps, guidance 3): "
              f"{_count(results, 'appearance')} colour×shape clips and {_count(results, 'direction')} 'moving …' clips "
              "per video variant (the compositional model: one clip per colour×shape prompt, below).", "",
              "| variant | object present | colour | shape | moving | coherent motion | track roughness ↓ | "
              "object consistency ↑ | direction (chance 25 %) | direction alignment | held-out colour | "
              "held-out shape | held-out right & coherent | final loss |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a, d = r["appearance"], r["direction"] or {}
        h = (r["all"] if r["direction"] else a)["held_out"]
        lines.append(f"| {r['variant'].title} | {fmt(a['present_fraction'])} | {fmt(a['colour_accuracy'])} | "
                     f"{fmt(a['shape_accuracy'])} | {fmt(a['moving_fraction'])} | {fmt(a['coherent_fraction'])} | "
                     f"{fmt(a['moving_smoothness'], False)} | {fmt(a['moving_consistency'], False)} | "
                     f"{fmt(d.get('direction_accuracy'))} | {fmt(d.get('direction_alignment'), False)} | "
                     f"{fmt(h['colour_accuracy'])} | {fmt(h['shape_accuracy'])} | {fmt(h['right_and_coherent'])} | "
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
              "trained model, not retraining with another seed.", ""]
    if "compositional" in results:
        r = results["compositional"]
        lines += ["## Compositional synthesis: conditions from clips outside the training data", "",
                  f"{r['variant'].title}: the colour×shape prompts, each sampled with the same seed without a "
                  "condition and with the motion field or the sketch sequence of a ground-truth shapes-world clip "
                  "that no run trained on (its direction and centroid track are known; directions balanced). The "
                  "conditions are extracted by the training extractors (tft2v.data.conditions), exactly as "
                  "`tft2v generate --motion / --sketch` does from a video file. A clip moves in the condition's "
                  "direction when it is moving (as above) and its detected direction is the condition clip's; it is "
                  "on the track when its centroid stays within "
                  f"{TRACK_TOLERANCE:g} px of the condition clip's on average; absent clips count as neither.", "",
                  *_conditioned_table(r), ""]
    lines += ["## Samples", ""]
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
              f"compositional step {budget.compositional_step_s:.2f} s, "
              f"{1000 * budget.sample_s_per_clip_step:.0f} ms per clip and sampling step.", "",
              "Numbers are whatever this run produced; `--minutes N` fits a longer (or shorter) run to N minutes."]
    metrics = {n: {"train": r["train"],
                   **{kind: {k: v for k, v in r[kind].items() if k != "clips"} if r[kind] else None
                      for kind in ("appearance", "direction", "all")},
                   **({"conditioned": {k: summarise_following(c) for k, c in r["conditioned"].items()}}
                      if "conditioned" in r else {})} for n, r in results.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "claims.json").write_text(json.dumps([{"claim": c, "evidence": e, "verdict": v} for c, e, v in verdicts],
                                                indent=2, ensure_ascii=False))
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
