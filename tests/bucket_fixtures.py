"""A corpus of mixed geometry on disk: landscape, portrait and square H.264 clips of different lengths
(some shorter than every video bucket) and PNG images in three aspects, with the buckets to train it in.

``corpus(root)`` returns {"videos": {key: (aspect, frames)}, "images": {key: aspect}}, aspect one of
"landscape", "portrait", "square"; clips are written at 8 fps, so ``frames`` is what they give at 8 fps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from media_fixtures import write_video

SHAPES = {"landscape": (24, 40), "portrait": (40, 24), "square": (32, 32)}  # (H, W) on disk
VIDEOS = {"landscape": (12, 12, 12, 6, 6), "portrait": (12, 12, 6, 6), "square": (12, 12, 6, 6, 6),
          "short": (3, 2)}  # frames per clip; "short" clips are square and fit no bucket
IMAGES = {"landscape": 9, "portrait": 7, "square": 8}
VIDEO_BUCKETS = ["16x24x4:2", "24x16x4:2", "16x16x4:2", "16x16x8:1"]
IMAGE_BUCKETS = ["16x24x1:3", "24x16x1:3", "16x16x1:4"]
BUCKETS = VIDEO_BUCKETS + IMAGE_BUCKETS
ASPECT_OF_BUCKET = {"16x24": "landscape", "24x16": "portrait", "16x16": "square"}


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(1, h, w, 3))
    drift = np.arange(n)[:, None, None, None] * 6
    return np.clip(base + drift, 0, 255).astype(np.uint8)


def corpus(root: str | Path) -> dict:
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    videos, images, seed = {}, {}, 0
    for aspect, lengths in VIDEOS.items():
        h, w = SHAPES["square" if aspect == "short" else aspect]
        for i, n in enumerate(lengths):
            key = f"{aspect}_{i}"
            write_video(root / "videos" / f"{key}.mp4", _frames(n, h, w, seed), fps=8)
            (root / "videos" / f"{key}.txt").write_text(f"a {aspect} clip number {i}")
            videos[key] = (aspect, n)
            seed += 1
    for aspect, count in IMAGES.items():
        h, w = SHAPES[aspect]
        for i in range(count):
            key = f"{aspect}_{i}"
            Image.fromarray(_frames(1, h, w, seed)[0]).save(root / "images" / f"{key}.png")
            (root / "images" / f"{key}.txt").write_text(f"a {aspect} picture number {i}")
            images[key] = aspect
            seed += 1
    return {"videos": videos, "images": images}


def usable_videos(meta: dict, min_frames: int = 4) -> set[str]:
    return {k for k, (_, n) in meta["videos"].items() if n >= min_frames}
