"""``tft2v data ...``: inspect a data source before training on it."""

from __future__ import annotations

import json
import re
import time
from typing import Optional

import typer

from tft2v.errors import TFT2VError

app = typer.Typer(help="Data sets: inspect sources, write the toy shapes world.", no_args_is_help=True)


def parse_size(text: str) -> tuple[int, int]:
    """``"256x448"`` → (256, 448) as (H, W)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise TFT2VError(f"--size must look like HxW (e.g. 256x448), got {text!r}")
    return int(match[1]), int(match[2])


def parse_named_vectors(items: list[str] | None, option: str, length: int) -> dict[str, tuple[float, ...]]:
    """``["orange=245,140,30", ...]`` → {"orange": (245.0, 140.0, 30.0)}; one-line errors."""
    out = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        try:
            vector = tuple(float(v) for v in values.split(","))
        except ValueError:
            vector = ()
        if not sep or not name.strip() or len(vector) != length:
            example = "orange=245,140,30" if length == 3 else "diagonal=1,1"
            raise TFT2VError(f"{option} must look like NAME={','.join(['N'] * length)} (e.g. {example}), got {item!r}")
        out[name.strip()] = vector
    return out


def inspect_source(spec: str, kind: str = "video", frames: int = 16, fps: float = 8.0,
                   size: tuple[int, int] | None = (256, 448), limit: int | None = None,
                   data_dir: str | None = None, decode_timeout: float = 30.0) -> dict:
    """Read ``spec`` exactly as training does (same source, same decode) and summarise the outcome."""
    from tft2v.data.sources import build_source

    source = build_source(spec, kind=kind, num_frames=frames, fps=fps, size=size, data_dir=data_dir,
                          shuffle=False, rank=0, world_size=1, decode_timeout=decode_timeout)
    start = time.perf_counter()
    examined, captioned, shapes = 0, 0, set()
    for sample in source.iter_with_skips():
        examined += 1
        if sample is not None:
            captioned += sample["has_text"]
            shapes.add(tuple(sample["pixels"].shape))
        if limit is not None and examined >= limit:
            break
    counts = source.stats.as_dict()
    usable = counts.pop("ok")
    return {"source": spec, "kind": kind, "examined": usable + sum(counts.values()), "usable": usable,
            "captioned": captioned, "skipped": {k: v for k, v in counts.items() if v},
            "examples": {k: v for k, v in source.stats.examples.items()},
            "pixel_shapes": sorted(list(s) for s in shapes),
            "seconds": round(time.perf_counter() - start, 3)}


def inspect_buckets(spec: str, buckets: list[str], kind: str = "video", fps: float = 8.0,
                    data_dir: str | None = None, index_cache: str | None = None) -> dict:
    """How ``spec`` falls into ``buckets`` (``"HxWxF:B"`` strings) as training would place it: samples
    per bucket and left out by reason, from the file index alone (headers, no clip decoding)."""
    from collections import Counter

    from tft2v.data.bucketed import assign_index, bucket_counts, kind_buckets
    from tft2v.data.buckets import Bucket, check_buckets
    from tft2v.data.index import build_index
    from tft2v.data.robust import SkipStats

    parsed = tuple(Bucket.coerce(f"--bucket {b!r}", b) for b in buckets)
    check_buckets(parsed)
    mine = kind_buckets(parsed, kind)
    if not mine:
        raise TFT2VError(f"no --bucket serves {kind}s (images take frames 1, videos frames > 1)")
    start = time.perf_counter()
    stats = SkipStats()
    index, path = build_index(spec, kind, data_dir, True, index_cache, stats)
    assigned, skipped = assign_index(index, mine, kind, fps)
    listing = {k: v for k, v in stats.as_dict().items() if v and k != "ok"}
    return {"source": spec, "kind": kind, "examined": len(index.items), "fps": fps,
            "buckets": bucket_counts(assigned, mine),
            "skipped": dict(Counter(skipped.values()) + Counter(listing)),
            "examples": {r: [k for k, v in skipped.items() if v == r][:5] for r in set(skipped.values())},
            "index": str(path), "seconds": round(time.perf_counter() - start, 3)}


def _print_buckets(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['source']} ({report['kind']}s at {report['fps']} fps) in buckets")
    table.add_column("bucket (HxWxF) / outcome")
    table.add_column("count", justify="right")
    table.add_column("first files")
    for name, count in report["buckets"].items():
        table.add_row(name, str(count), "" if count else "empty: costs nothing")
    for reason, count in report["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count), "\n".join(report["examples"].get(reason, [])))
    Console().print(table)
    Console().print(f"examined {report['examined']} in {report['seconds']} s; index {report['index']}")


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['source']} ({report['kind']})")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("first files")
    table.add_row("usable", str(report["usable"]), f"{report['captioned']} with a caption")
    for reason, count in report["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count), "\n".join(report["examples"].get(reason, [])))
    console = Console()
    console.print(table)
    shapes = ", ".join("x".join(map(str, s)) for s in report["pixel_shapes"]) or "-"
    console.print(f"examined {report['examined']} in {report['seconds']} s; pixel shapes (C,F,H,W): {shapes}")


@app.command()
def inspect(
    source: str = typer.Argument(..., help="Folder, .csv/.jsonl manifest, VGen .txt list, or .tar shards/URL."),
    kind: str = typer.Option("video", help="image or video."),
    frames: int = typer.Option(16, help="Frames per video clip."),
    fps: float = typer.Option(8.0, help="Target sampling fps."),
    size: str = typer.Option("256x448", help="Output HxW (resize shorter side + center crop)."),
    limit: Optional[int] = typer.Option(None, help="Examine at most this many files."),
    data_dir: Optional[str] = typer.Option(None, help="Root for relative paths of a VGen list."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    bucket: Optional[list[str]] = typer.Option(None, "--bucket", help="A training bucket HxWxF:B (repeatable, "
                                               "as data.buckets): show how SOURCE falls into them instead."),
    index_cache: Optional[str] = typer.Option(None, help="Where file indexes are cached (as data.index_cache)."),
) -> None:
    """Count usable samples and skipped files by reason, reading SOURCE the way training does; with
    --bucket, count samples per bucket from the file index (no clip decoding)."""
    import logging

    if kind not in ("image", "video"):
        raise TFT2VError(f"--kind must be image or video, got {kind!r}")
    if limit is not None and limit < 1:
        raise TFT2VError(f"--limit must be >= 1, got {limit}")
    logging.getLogger("tft2v.data").setLevel(logging.ERROR)  # skips are reported below instead
    if bucket:
        report = inspect_buckets(source, bucket, kind=kind, fps=fps, data_dir=data_dir, index_cache=index_cache)
        print(json.dumps(report)) if json_out else _print_buckets(report)
        return
    report = inspect_source(source, kind=kind, frames=frames, fps=fps, size=parse_size(size),
                            limit=limit, data_dir=data_dir)
    if json_out:
        print(json.dumps(report))
    else:
        _print_table(report)


@app.command()
def toy(
    out: str = typer.Argument(..., help="New (or empty) folder to write the shapes world into."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes identical data."),
    num_images: int = typer.Option(2000, help="Image-text pairs."),
    num_videos: int = typer.Option(1000, help="Text-free videos."),
    num_captioned: int = typer.Option(100, help="Captioned videos (for semi-supervised runs)."),
    size: int = typer.Option(32, help="Frame side in pixels (even)."),
    frames: int = typer.Option(16, help="Frames per video."),
    colour: Optional[list[str]] = typer.Option(None, "--colour", help="New colour NAME=R,G,B (repeatable), "
                                               "e.g. orange=245,140,30; drawn beside the spec's six."),
    motion: Optional[list[str]] = typer.Option(None, "--motion", help="New motion NAME=DX,DY (repeatable, y down), "
                                               "e.g. diagonal=1,1 (down-right); drawn beside the spec's four."),
    only_colour: bool = typer.Option(False, "--only-colour", help="Draw only the --colour colours."),
    only_motion: bool = typer.Option(False, "--only-motion", help="Draw only the --motion motions."),
) -> None:
    """Write the shapes world (SPEC §3) as PNG+txt images, lossless mp4 videos, manifests and ground truth."""
    from tft2v.data.toy import ToyWorld, world_sets
    from tft2v.data.toy_files import write_toy_dataset

    colours, motions = world_sets(parse_named_vectors(colour, "--colour", 3),
                                  parse_named_vectors(motion, "--motion", 2), only_colour, only_motion)
    if min(num_images, num_videos, num_captioned) < 0:
        raise TFT2VError("--num-images, --num-videos and --num-captioned must be >= 0")
    if size % 2:
        raise TFT2VError(f"--size must be even (H.264 needs even frame sizes), got {size}")
    world = ToyWorld(size=size, frames=frames)
    counts = write_toy_dataset(out, seed=seed, num_images=num_images, num_videos=num_videos,
                               num_captioned=num_captioned, world=world, colours=colours, motions=motions)
    print(f"wrote {counts['images']} images, {counts['videos']} text-free videos and "
          f"{counts['captioned_videos']} captioned videos to {out}")
