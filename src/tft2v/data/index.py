"""A data set's file index, built once per run by the main process and cached on disk.

The index of a local source (folder, manifest, VGen list, local tar shards) is its list of items and,
when buckets need it, each item's display geometry (height, width, and for videos duration and fps),
read from container headers and the first decoded frame (rotation) without decoding clips.

It is cached under ``data.index_cache`` (default ``$TFT2V_CACHE_DIR/index``, else
``~/.cache/tft2v/index``) in a file named by a fingerprint of the spec, the manifest's bytes and every
listed file's size and mtime (tar shards: the shards'). A changed data set has another fingerprint, so
it is indexed anew and never half-used. In a distributed run only the main process lists, stats and
probes; it broadcasts the cache file's path and the other ranks read that file. DataLoader workers
inherit the index from their rank (fork) instead of listing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tft2v.data.media_source import Item, TarMember
from tft2v.data.robust import SkipStats, classify
from tft2v.errors import TFT2VError

log = logging.getLogger("tft2v.data")
FORMAT = 1


@dataclass
class DataIndex:
    """Items of one source, their geometry (None per item when not probed) and the probe failures."""

    items: list[Item]
    geometry: list[dict | None]
    failures: dict[str, str]  # key -> skip reason, for items that could not be probed


def default_cache_dir() -> Path:
    root = os.environ.get("TFT2V_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tft2v")
    return Path(root) / "index"


def _local_files(spec: str, items: list[Item]) -> list[str]:
    """Files whose size and mtime decide the index: the listed media (a tar item: its shard)."""
    files = {spec} if os.path.isfile(spec) else set()
    for item in items:
        media = item.media.path if isinstance(item.media, TarMember) else item.media
        if isinstance(media, str) and "://" not in media:
            files.add(media)
    return sorted(files)


def fingerprint(spec: str, kind: str, data_dir: str | None, probe: bool, files: list[str]) -> str:
    """sha256 over the spec, the manifest's bytes and each file's (path, size, mtime_ns)."""
    h = hashlib.sha256(json.dumps([FORMAT, os.path.abspath(spec), kind, data_dir, probe]).encode())
    if os.path.isfile(spec) and not spec.endswith((".tar", ".tgz", ".tar.gz")):
        h.update(Path(spec).read_bytes())
    for path in files:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()[:32]


def probe_geometry(item: Item, kind: str) -> dict:
    """Display geometry of one item without decoding its clip: ``{"height", "width"}`` plus, for videos,
    ``"duration"`` and ``"fps"`` (seconds, frames per second of the stream)."""
    media = item.media.read() if isinstance(item.media, TarMember) else item.media
    if kind == "image":
        return _image_geometry(media)
    return _video_geometry(media)


def _image_geometry(media) -> dict:
    import io

    from PIL import Image

    from tft2v.data.image_io import NotAnImageError, looks_like_video

    if isinstance(media, bytes):
        head, media = media[:16], io.BytesIO(media)
    else:
        with open(media, "rb") as f:
            head = f.read(16)
    if looks_like_video(head):
        raise NotAnImageError("file holds a video container, not an image")
    with Image.open(media) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # EXIF rotations by a quarter turn, as read_image applies them
        w, h = h, w
    return {"height": h, "width": w}


def _video_geometry(media) -> dict:
    from tft2v.data.video_io import ClipTooShortError, display_geometry, open_video, probe

    with open_video(media) as container:
        info = probe(container)
        stream = container.streams.video[0]
        rotation = 0
        for frame in container.decode(stream):
            rotation = int(frame.rotation or 0)
            break
        else:
            raise ClipTooShortError("no decodable frame")
    _, (h, w) = display_geometry((info.height, info.width), rotation, info.pixel_aspect, None)
    if round(rotation / 90) % 2:
        h, w = w, h  # display_geometry returns the coded orientation
    duration = info.duration if info.duration else (info.num_frames / info.fps if info.fps else 0.0)
    return {"height": int(h), "width": int(w), "duration": float(duration or 0.0), "fps": float(info.fps)}


def _encode(item: Item, geometry: dict | None) -> dict:
    row = item.to_row()
    if geometry is not None:
        row["geometry"] = geometry
    return row


def _probe_all(items: list[Item], kind: str, threads: int) -> tuple[list[dict | None], dict[str, str]]:
    def one(item):
        try:
            return probe_geometry(item, kind), None
        except Exception as exc:  # noqa: BLE001 - a file that cannot be probed is a counted skip
            return None, classify(exc)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(one, items, chunksize=64))
    failures = {item.key: reason for item, (_, reason) in zip(items, results) if reason is not None}
    return [g for g, _ in results], failures


def build_index(spec: str, kind: str, data_dir: str | None, probe: bool, cache_dir: str | os.PathLike | None,
                stats: SkipStats | None = None, threads: int | None = None) -> tuple[DataIndex, Path | None]:
    """List (and with ``probe`` measure) ``spec``, or read its cached index; returns it and the cache file."""
    from tft2v.data.sources import list_items
    from tft2v.data.sources_webdataset import expand_urls, is_tar_spec

    stats = stats if stats is not None else SkipStats()
    tar = is_tar_spec(spec)
    items = None if tar else list_items(spec, kind, data_dir, stats)
    files = expand_urls(spec) if tar else _local_files(spec, items)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / f"{kind}-{fingerprint(spec, kind, data_dir, probe, files)}.json"
    if path.is_file():
        if items is not None and not probe:  # the listing just made is the whole index
            return DataIndex(items, [None] * len(items), {}), path
        return read_index(path), path
    start = time.perf_counter()
    if items is None:
        items = list_items(spec, kind, data_dir, stats)
    geometry, failures = ([None] * len(items), {})
    if probe:
        geometry, failures = _probe_all(items, kind, threads or min(16, (os.cpu_count() or 1) * 2))
    index = DataIndex(items, geometry, failures)
    write_index(index, path)
    log.info("indexed %s: %d %s items in %.1f s -> %s", spec, len(items), kind, time.perf_counter() - start, path)
    return index, path


def write_index(index: DataIndex, path: Path) -> None:
    """Atomically (temp file, then rename): a reader never sees half an index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "failures": index.failures,
            "items": [_encode(i, g) for i, g in zip(index.items, index.geometry)]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.replace(tmp, path)


def read_index(path: str | os.PathLike) -> DataIndex:
    try:
        body = json.loads(Path(path).read_text())
        if body.get("format") != FORMAT:
            raise ValueError(f"format {body.get('format')} != {FORMAT}")
        pairs = [(Item.from_row(row), row.get("geometry")) for row in body["items"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TFT2VError(f"data index {path} is unreadable ({exc}); delete it to re-index") from None
    return DataIndex([i for i, _ in pairs], [g for _, g in pairs], dict(body.get("failures", {})))


def shared_index(spec: str, kind: str, data_dir: str | None, probe: bool, cache_dir: str | None,
                 stats: SkipStats) -> DataIndex:
    """:func:`build_index` on the main process only; the other ranks read the file it wrote."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return build_index(spec, kind, data_dir, probe, cache_dir, stats)[0]
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            index, path = build_index(spec, kind, data_dir, probe, cache_dir, stats)
            box = [str(path)]
        except Exception as exc:  # noqa: BLE001 - every rank raises it, none waits forever
            box = [exc]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return index if dist.get_rank() == 0 else read_index(box[0])
