"""Start-up of the real-data loader on a large manifest: 2 gloo ranks × 2 DataLoader workers.

Writes ``--entries`` manifest rows (hard links to a few copies of one small H.264 clip, so every row is a real file with
its own path), then on 2 ranks times ``build_loader`` (listing / indexing) and the first batch. Run it
twice with the same ``--work`` folder to see a cold and a warm index cache; ``--worker-start`` picks how
the DataLoader workers start (``data.worker_start``); point PYTHONPATH at an older
checkout's ``src`` to measure code from before the shared index. ``--buckets`` adds aspect buckets
(every file probed once, on the main process). Prints one JSON line.

    python benchmarks/data_startup.py --entries 100000 --work /tmp/startup
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def write_manifest(work: Path, entries: int) -> Path:
    import av

    clips, manifest = work / "clips", work / "manifest.csv"
    if manifest.is_file():
        return manifest
    clips.mkdir(parents=True, exist_ok=True)
    seed = clips / "seed.mp4"
    with av.open(str(seed), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        for i in range(12):
            frame = np.full((32, 48, 3), 20 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    rows = ["path,caption"]
    for i in range(entries):
        name = f"c{i:06d}.mp4"
        if i % 50_000 == 0:  # a file system allows ~65,000 links to one inode: a fresh copy per block
            block = clips / f"seed{i // 50_000}.mp4"
            block.write_bytes(seed.read_bytes())
        if not (clips / name).exists():
            os.link(block, clips / name)
        rows.append(f"clips/{name},")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def rank_main(rank: int, world: int, manifest: str, buckets: bool, worker_start: str, port: int, queue) -> None:
    import torch.distributed as dist

    from tft2v.config import load_config
    from tft2v.train.data import build_loader

    t0 = time.perf_counter()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sets = ["data.kind=sources", f"data.videos={manifest}", "data.ratio=[0, 1]", "data.num_workers=2",
            "data.height=16", "data.width=16", "data.num_frames=4", "data.video_batch_size=2",
            f"data.worker_start={worker_start}"]
    if buckets:
        sets.append('data.buckets=["16x24x4:2","24x16x4:2","16x16x4:2"]')
    cfg = load_config(None, sets)
    loader = build_loader(cfg, rank, world)
    t1 = time.perf_counter()
    steps = iter(loader)
    next(steps)
    t2 = time.perf_counter()
    steps.close()  # shuts the DataLoader workers down before the process group
    dist.barrier()
    queue.put({"rank": rank, "build_loader_s": round(t1 - t0, 3), "first_batch_s": round(t2 - t1, 3),
               "total_s": round(t2 - t0, 3)})
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--work", default="/tmp/tft2v-startup")
    parser.add_argument("--buckets", action="store_true")
    parser.add_argument("--worker-start", default="forkserver", help="data.worker_start: forkserver / spawn / fork")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TFT2V_CACHE_DIR", str(work / "cache"))
    manifest = write_manifest(work, args.entries)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    start = time.perf_counter()
    procs = [ctx.Process(target=rank_main, args=(r, 2, str(manifest), args.buckets, args.worker_start, port,
                                                              queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    ranks = sorted((queue.get(timeout=1800) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    print(json.dumps({"label": args.label, "entries": args.entries, "buckets": args.buckets,
                      "worker_start": args.worker_start, "ranks": ranks,
                      "wall_s": round(time.perf_counter() - start, 3), "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
