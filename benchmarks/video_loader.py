"""Clips/s of the seeking PyAV loader vs. decode-all-frames baselines, and DataLoader throughput.

Generates 10 s, 30 fps, 854x480 H.264 videos (keyframe every 2 s, a common encoder setting) with
moving texture, then reads 16-frame clips at 8 fps resized + center-cropped to 256x448 from random
starts with:
* ``seek``: ``tft2v.data.video_io.read_clip`` (seek to the keyframe before the clip, decode until the
  last needed frame, convert only the kept frames, resizing in swscale);
* ``decode_all``: the naive loader — decode every frame to full-size RGB, pick the same frames, resize
  + crop them with torch;
* ``decode_all_lazy``: a stronger baseline — decode every frame but convert only the picked ones.
Then the full source (``build_source`` → DataLoader, batch 4) with 0..N workers. Prints ONE JSON line.
Layout: clips are uint8 ``(F, H, W, C)`` at the reader, float ``(B, C, F, H, W)`` out of the DataLoader.

    python benchmarks/video_loader.py [--videos 4] [--clips 24] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tft2v.data.image_io import center_crop, cover_size
from tft2v.data.media_source import collate
from tft2v.data.sources import build_source
from tft2v.data.video_io import plan_times, read_clip

FRAMES, FPS, SIZE = 16, 8.0, (256, 448)


def make_video(path: Path, seconds: float = 10, fps: int = 30, width: int = 854, height: int = 480,
               seed: int = 0) -> Path:
    """Textured frames that drift, so the encoder produces realistic P-frames (not empty ones)."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (height // 8, width // 8 + 64, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for i in range(int(seconds * fps)):
            shift = i // 4
            frame = np.kron(tile[:, shift : shift + width // 8], np.ones((8, 8, 1), np.uint8))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def decode_all(path: Path, rng: np.random.Generator, lazy: bool) -> np.ndarray:
    """Baseline: decode every frame, then pick the clip's frames (by the same timing rule) and resize."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = [f if lazy else f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate)
    times, _ = plan_times(0.0, len(decoded) / fps, fps, FRAMES, FPS, rng)
    picked = [decoded[min(round(t * fps), len(decoded) - 1)] for t in times]
    if lazy:
        picked = [f.to_ndarray(format="rgb24") for f in picked]
    clip = torch.from_numpy(np.stack(picked)).permute(0, 3, 1, 2).float()  # (F, C, H, W)
    h, w = cover_size(clip.shape[-2:], SIZE)
    clip = F.interpolate(clip, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return center_crop(clip.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy(), SIZE)


def clips_per_second(fn, paths: list[Path], clips: int) -> float:
    rng = np.random.default_rng(0)
    fn(paths[0], rng)  # warm-up (codec init, page cache)
    start = time.perf_counter()
    for i in range(clips):
        fn(paths[i % len(paths)], rng)
    return clips / (time.perf_counter() - start)


def loader_throughput(manifest: Path, workers: int, clips: int) -> float:
    source = build_source(manifest, kind="video", num_frames=FRAMES, fps=FPS, size=SIZE, seed=0)
    loader = DataLoader(source, batch_size=4, num_workers=workers, collate_fn=collate)
    seen, start = 0, None
    for batch in loader:
        if start is None:  # exclude worker start-up and the first batch
            start = time.perf_counter()
            continue
        seen += batch["pixels"].shape[0]
        if seen >= clips:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=24, help="clips timed per reader")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = [make_video(tmp / f"v{i}.mp4", seed=i) for i in range(args.videos)]
        gen_s = time.perf_counter() - t0
        seek = clips_per_second(lambda p, r: read_clip(p, FRAMES, FPS, SIZE, r), paths, args.clips)
        full = clips_per_second(lambda p, r: decode_all(p, r, lazy=False), paths, max(4, args.clips // 4))
        lazy = clips_per_second(lambda p, r: decode_all(p, r, lazy=True), paths, max(4, args.clips // 4))
        manifest = tmp / "m.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in paths * 64))
        loader = {str(w): round(loader_throughput(manifest, w, args.clips), 2) for w in args.workers}
    print(json.dumps({
        "benchmark": "video_loader", "video": "10s 30fps 854x480 h264 gop60", "clip": "16f@8fps 256x448",
        "cpu_cores": os.cpu_count(), "videos": args.videos, "generate_s": round(gen_s, 1),
        "seek_clips_per_s": round(seek, 2), "decode_all_clips_per_s": round(full, 2),
        "decode_all_lazy_clips_per_s": round(lazy, 2), "speedup_vs_decode_all": round(seek / full, 2),
        "speedup_vs_decode_all_lazy": round(seek / lazy, 2), "loader_clips_per_s_by_workers": loader}))


if __name__ == "__main__":
    main()
