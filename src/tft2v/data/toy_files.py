"""Write the shapes world to disk in the formats real data uses, so the real loaders are exercised.

Layout of ``OUT`` (paths in manifests are relative to ``OUT``)::

    images/000000.png + 000000.txt          image–text pairs (sidecar caption)
    videos/000000.mp4                       text-free videos (no caption file)
    captioned_videos/000000.mp4 + .txt      captioned videos
    images.jsonl, videos.jsonl, captioned_videos.jsonl   manifests: {"path", "caption"?}
    images.txt, videos.txt, captioned_videos.txt          VGen lists: ``relpath|||caption``
    ground_truth.jsonl                      {"set", "path", "caption", colour, shape, size, motion, speed, track}
    info.json                               generator settings (seed, counts, world, fps, codec)

Videos are H.264 in RGB (``libx264rgb``) at constant QP 0, i.e. lossless, so colours and positions
survive the round trip bit-exactly and decode with any FFmpeg-based reader. Layout at this edge is
uint8 ``(F, H, W, 3)``; the in-memory generator (:mod:`tft2v.data.toy`) holds the same values.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tft2v.data.toy import KINDS, ToyWorld, generate
from tft2v.errors import TFT2VError

VIDEO_CODEC = "libx264rgb"
VIDEO_FPS = 8  # VGen writes its samples at 8 fps; read the clips back at this fps to get every frame


def write_video(path: Path | str, frames: np.ndarray, fps: int = VIDEO_FPS) -> None:
    """Write uint8 (F, H, W, 3) frames as a lossless RGB H.264 mp4 (even H and W required)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise TFT2VError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise TFT2VError(f"H.264 needs even frame sizes, got {h}x{w}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"qp": "0", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path | str) -> np.ndarray:
    """Decode every frame of a video file to uint8 (F, H, W, 3) (a plain reader for tests and tools)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_toy_dataset(
    out: Path | str,
    seed: int = 0,
    num_images: int = 2000,
    num_videos: int = 1000,
    num_captioned: int = 100,
    world: ToyWorld = ToyWorld(),
    fps: int = VIDEO_FPS,
    colours: dict | None = None,
    motions: dict | None = None,
) -> dict[str, int]:
    """Generate the three sets (same data as :func:`tft2v.data.toy.generate` with this seed, ``colours`` and
    ``motions``: other colour / motion sets, ``None`` = the spec's) and write them under ``out``. Returns the
    number of files written per set."""
    from PIL import Image

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TFT2VError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise TFT2VError(f"output folder {out} is not empty; choose a new folder")
    counts = {"images": num_images, "videos": num_videos, "captioned_videos": num_captioned}
    out.mkdir(parents=True, exist_ok=True)
    truth_lines = []
    for kind in KINDS:
        data = generate(kind, counts[kind], seed=seed, world=world, colours=colours, motions=motions)
        folder = out / kind
        folder.mkdir()
        manifest, vgen_list = [], []
        for i in range(len(data)):
            rel = f"{kind}/{i:06d}.{'png' if kind == 'images' else 'mp4'}"
            if kind == "images":
                Image.fromarray(data.frames[i, 0]).save(out / rel)
            else:
                write_video(out / rel, data.frames[i], fps=fps)
            caption = data.caption(i)
            if caption:
                (out / rel).with_suffix(".txt").write_text(caption + "\n")
            manifest.append({"path": rel, "caption": caption} if caption else {"path": rel})
            vgen_list.append(f"{rel}|||{caption}")
            truth_lines.append({"set": kind, "path": rel, "caption": caption, **data.truth(i)})
        _write_jsonl(out / f"{kind}.jsonl", manifest)
        (out / f"{kind}.txt").write_text("".join(line + "\n" for line in vgen_list))
    _write_jsonl(out / "ground_truth.jsonl", truth_lines)
    info = {"seed": seed, "counts": counts, "world": asdict(world), "fps": fps, "codec": VIDEO_CODEC}
    if colours is not None:  # recorded only when not the spec's, so a default dataset's info.json is unchanged
        info["colours"] = {k: list(v) for k, v in colours.items()}
    if motions is not None:
        info["motions"] = {k: list(v) for k, v in motions.items()}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return counts


def read_ground_truth(out: Path | str) -> list[dict]:
    """The ``ground_truth.jsonl`` rows of a written toy dataset."""
    path = Path(out) / "ground_truth.jsonl"
    if not path.is_file():
        raise TFT2VError(f"{path} not found; is {out} a toy dataset written by `tft2v data toy`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
