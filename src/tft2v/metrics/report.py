"""Writes an evaluation result (from :func:`tft2v.metrics.evaluate.evaluate_videos`) as JSON + markdown."""

from __future__ import annotations

import json
from pathlib import Path

# (key, label) of the headline metrics, in table order.
_HEADLINE = (
    ("fvd", "FVD (I3D)"),
    ("fid", "FID (Inception, per frame)"),
    ("clipsim", "CLIPSIM (cosine; paper scale, e.g. 0.2930)"),
    ("clipsim_x100", "CLIPSIM ×100"),
    ("frame_consistency", "Frame consistency (CLIP cosine)"),
    ("frame_consistency_x100", "Frame consistency ×100"),
)
_TOY = (
    ("colour_accuracy", "colour acc"),
    ("shape_accuracy", "shape acc"),
    ("direction_accuracy", "direction acc"),
    ("coherent_fraction", "coherent motion"),
    ("smoothness", "track 2nd diff (px, lower=smoother)"),
    ("pixel_consistency", "pixel consistency"),
    ("presence", "object presence"),
)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _shapes(counts: dict) -> str:
    return ", ".join(f"{n} × {shape}" for shape, n in counts.items())


def protocol_markdown(result: dict) -> list[str]:
    """The evaluation protocol (``result["protocol"]``, written by ``tft2v eval``) as markdown lines."""
    p = result.get("protocol")
    if not p:
        return []
    lines = ["", "Protocol:", ""]
    s = p.get("sampling")
    if s:
        lines.append(f"- Generated: {result['num_videos']} videos sampled from `{s['model']}`: {s['num_prompts']} prompts "
                     f"(`{s['prompts_file']}`) × seeds {s['seeds']}; {s['scheduler']}, {s['steps']} steps, guidance "
                     f"{s['guidance']}, {s['frames']} frames at {s['resolution']} (H×W), {s['sample_batch']} per "
                     f"batch; videos in `{s['samples']}`")
    elif "videos" in p:
        lines.append(f"- Generated: {result['num_videos']} videos from `{p['videos']}`")
    if "reference" in p:
        lines.append(f"- Reference: {result.get('num_reference', 0)} videos from `{p['reference']}`")
    shapes = result.get("clip_shapes", {})
    if shapes:
        lines.append("- Clips scored (frames×H×W): " + "; ".join(f"{side} {_shapes(c)}" for side, c in shapes.items()))
    frames = "all frames" if p.get("eval_frames") == "all" else f"the first {p['eval_frames']} frames"
    lines.append(f"- Frames per clip: {frames} at stride {p.get('frame_stride', 1)}")
    for key, label in (("fvd", "FVD"), ("fid", "FID")):
        net = p.get(key)
        if net:
            src = net.get("converted_from")
            origin = f", converted from {src['source_file']} (sha256 {src['source_sha256']})" if src else ""
            lines.append(f"- {label}: {net['network']}, {net['features']} features; weights `{net['weights']}` "
                         f"(sha256 {net['sha256']}{origin}); input: {net['preprocess']}")
    if "fid_num_frames" in result:
        lines.append(f"- FID over {result['fid_num_frames']} generated frames (every scored frame is an image)")
    if p.get("clip"):
        c = p["clip"]
        lines.append(f"- CLIP: `{c['model']}` at {c['image_size']} px; {c['preprocess']}")
    lines += [f"- Note: {note}" for note in p.get("notes", [])]
    return lines


def markdown(result: dict) -> str:
    """The headline metrics, skipped metrics, the protocol and (if present) toy-world tables as markdown."""
    lines = [f"Videos: {result['num_videos']}" + (f", reference: {result['num_reference']}" if "num_reference" in result else ""), ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(result[key])} |" for key, label in _HEADLINE if key in result]
    for key, why in result.get("skipped", {}).items():
        lines.append(f"| {key} | skipped: {why} |")
    lines += protocol_markdown(result)
    toy = result.get("toy")
    if toy:
        cols = [label for _, label in _TOY]
        lines += ["", "Shapes world (analytic evaluators):", ""]
        lines += ["| group | clips | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        rows = [("all", toy), ("seen combos", toy["seen"]), ("held-out combos", toy["held_out"])]
        rows += [(f"{name}{' (held out)' if s['held_out'] else ''}", s) for name, s in toy["per_combo"].items()]
        for name, s in rows:
            lines.append(f"| {name} | {s['num_clips']} | " + " | ".join(_fmt(s[k]) for k, _ in _TOY) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: str | Path) -> tuple[Path, Path]:
    """Writes ``out`` (JSON) and the markdown table beside it (same name, ``.md``); returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    return out, md
