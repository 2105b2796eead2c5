"""The shapes world generator (SPEC §3): image–text pairs, text-free videos, captioned videos.

Everything is vectorised numpy: random parameters for a whole set are drawn first (so results do not
depend on chunking), then frames are rendered in chunks from signed distance functions with a
one-pixel anti-aliased edge, which lets objects sit and move at sub-pixel positions.

Layout: a set stores its frames as uint8 ``(N, F, H, W, 3)`` (the I/O-edge layout, 4× smaller than
float); samples handed to training are float32 ``(3, F, H, W)`` in [-1, 1] (an image is F = 1), i.e.
``(B, C, F, H, W)`` once collated. The values are quantised to uint8 exactly as the files
:func:`tft2v.data.toy_files.write_toy_dataset` writes, so in-memory and on-disk data are the same.

Geometry conventions (shared with the analytic evaluators): ``x`` grows rightwards, ``y`` downwards,
pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``. An object's ``size`` is the side of its bounding box
(the circle's diameter, the square's side, the triangle's base and height; the triangle points up).
``track`` is the analytic area centroid per frame, ``(F, 2)`` as ``(x, y)``.

New material beyond SPEC §3 (e.g. for LoRA demonstrations): ``generate(..., colours=, motions=)`` draws
from other colour / motion sets (names → RGB, names → (dx, dy)); :func:`world_sets` builds them from the
spec's plus extra entries. Left at ``None`` the sets are the spec's and the output is unchanged. A motion
vector is normalised to unit length, so speeds stay px/frame along the path (diagonals included).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import math
import re

import numpy as np
import torch

from tft2v.data import shapes_spec as spec
from tft2v.data.sharding import EpochSampler
from tft2v.errors import TFT2VError

KINDS = ("images", "videos", "captioned_videos")
_KIND_STREAM = {k: i for i, k in enumerate(KINDS)}  # separate random streams per set
_COLOUR_NAMES = tuple(spec.COLOURS)
_COLOUR_RGB = np.array([spec.COLOURS[c] for c in _COLOUR_NAMES], dtype=np.float32)  # (6, 3)
# The anti-aliased edge reaches half a pixel beyond the shape; a 1 px margin keeps the border pixels
# pure background, so "fully in frame" holds for the rendered pixels too.
_MARGIN = 1.0


@dataclass(frozen=True)
class ToyWorld:
    """Shapes-world settings; defaults are SPEC §3. Speeds are continuous px/frame."""

    size: int = spec.FRAME_SIZE
    frames: int = spec.NUM_FRAMES
    size_range: tuple[int, int] = spec.SIZE_RANGE
    speed_range: tuple[float, float] = spec.SPEED_RANGE
    background_max: int = spec.BACKGROUND_MAX

    def __post_init__(self) -> None:
        lo, hi = self.size_range
        if not (1 <= lo <= hi < self.size):
            raise TFT2VError(f"object size range {self.size_range} must fit inside {self.size}px frames")
        if self.frames < 1:
            raise TFT2VError(f"frames must be >= 1, got {self.frames}")
        if not (0 < self.speed_range[0] <= self.speed_range[1]):
            raise TFT2VError(f"speed range {self.speed_range} must be positive and ordered")
        # The largest object moving at the slowest speed must still fit for the whole clip.
        if self.max_speed(hi) < self.speed_range[0]:
            raise TFT2VError(
                f"a {hi}px object at {self.speed_range[0]} px/frame leaves a {self.size}px frame "
                f"within {self.frames} frames; use fewer frames, smaller objects or a bigger frame"
            )
        if not (4 <= self.background_max <= 128):
            raise TFT2VError(f"background_max must be in [4, 128], got {self.background_max}")

    def max_speed(self, obj_size: float | np.ndarray) -> float | np.ndarray:
        """Fastest speed (px/frame) at which an object of ``obj_size`` stays in frame for a clip."""
        travel = self.size - 2 * _MARGIN - np.asarray(obj_size, dtype=np.float64)
        return travel / max(self.frames - 1, 1)


@dataclass
class ToySet:
    """One generated set. ``frames`` uint8 (N, F, H, W, 3); per-sample ground truth arrays of length N.

    ``motion`` is -1 and ``speed`` 0 for still images; ``track`` is (N, F, 2) area centroids (x, y).
    """

    kind: str
    frames: np.ndarray
    colour: np.ndarray  # (N,) index into shapes_spec.COLOURS order
    shape: np.ndarray  # (N,) index into shapes_spec.SHAPES
    obj_size: np.ndarray  # (N,) float, bounding-box side in px
    motion: np.ndarray  # (N,) index into shapes_spec.MOTIONS, -1 for images
    speed: np.ndarray  # (N,) px/frame
    track: np.ndarray  # (N, F, 2)
    colour_names: tuple[str, ...] = _COLOUR_NAMES  # what ``colour`` indexes (the spec's unless generated
    motion_names: tuple[str, ...] = spec.MOTIONS  # with other sets); ``motion`` indexes ``motion_names``

    def __len__(self) -> int:
        return len(self.frames)

    def caption(self, i: int) -> str:
        """The sample's caption; '' for text-free videos."""
        if self.kind == "videos":
            return ""
        motion = self.motion_names[self.motion[i]] if self.kind == "captioned_videos" else None
        colour, shape = self.colour_names[self.colour[i]], spec.SHAPES[self.shape[i]]
        if colour in spec.COLOURS and (motion is None or motion in spec.MOTIONS):
            return spec.caption(colour, shape, motion)
        return f"a {colour} {shape}" + (f" moving {motion}" if motion else "")  # the same grammar, new words

    def truth(self, i: int) -> dict:
        """Analytic ground truth of sample ``i`` as plain Python values (JSON-ready)."""
        return {
            "colour": self.colour_names[self.colour[i]],
            "shape": spec.SHAPES[self.shape[i]],
            "size": round(float(self.obj_size[i]), 4),
            "motion": self.motion_names[self.motion[i]] if self.motion[i] >= 0 else None,
            "speed": round(float(self.speed[i]), 4),
            "track": np.round(self.track[i], 4).tolist(),
        }

    def sample(self, i: int) -> dict:
        """Sample ``i`` in the shared SAMPLE format (pixels (3, F, H, W) in [-1, 1], middle cond frame)."""
        pixels = to_pixels(self.frames[i])  # (3, F, H, W)
        caption = self.caption(i)
        return {
            "pixels": pixels,
            "caption": caption,
            "has_text": caption != "",
            "cond_frame": pixels[:, pixels.shape[1] // 2].clone(),  # VGen's middle frame int(F/2)
            "key": f"{self.kind}/{i:06d}",
            "meta": self.truth(i),
        }

    def stream(self, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> "ToyStream":
        """An endless, seeded, resumable stream of rank ``rank``'s share of this set (reshuffled every epoch)."""
        return ToyStream(self, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)


class ToyStream:
    """Endless iterable over one rank's share of a :class:`ToySet`, by the rule of
    :mod:`tft2v.data.sharding`: epoch ``e`` is a permutation seeded by (seed, e), rank ``r`` of ``R``
    takes ``perm[r::R]``.

    ``iter_from(n)`` starts at the n-th item in O(1), which the mixing loader uses to resume exactly.
    """

    def __init__(self, data: ToySet, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if len(data) == 0:
            raise TFT2VError(f"toy set {data.kind!r} is empty")
        self.data, self.seed, self.shuffle, self.rank, self.world_size = data, seed, shuffle, rank, world_size
        EpochSampler(len(data), seed, rank, world_size, shuffle)  # fewer samples than ranks fails here, not mid-run

    def iter_from(self, start: int) -> Iterator[dict]:
        for epoch, index, position in EpochSampler(len(self.data), self.seed, self.rank, self.world_size,
                                                   self.shuffle, start):
            yield {**self.data.sample(index), "epoch": epoch, "position": position}

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) → float32 (3, F, H, W) in [-1, 1] (same normalisation as the video loader)."""
    # numpy, not torch: per-sample tensors are tiny, and torch's intra-op thread pool costs far more
    # than the arithmetic on a busy CPU.
    x = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)  # (3, F, H, W)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return torch.from_numpy(x)


def allowed_combos(kind: str, colour_names: tuple[str, ...] = _COLOUR_NAMES) -> list[tuple[int, int]]:
    """(colour, shape) index pairs a set may use: all 18 for images, held-out ones removed for videos."""
    held = set(spec.HELD_OUT)
    return [
        (c, s)
        for c, cn in enumerate(colour_names)
        for s, sn in enumerate(spec.SHAPES)
        if kind == "images" or (cn, sn) not in held
    ]


_WORD = re.compile(r"[a-z]+")


def check_colours(colours: dict) -> dict[str, tuple[int, int, int]]:
    """Validate a colour set {name: (r, g, b)}: lower-case word names, 0–255 channels, bright enough to stand
    out from the dark background and saturated enough for the detector; a spec name must keep its RGB."""
    if not isinstance(colours, dict) or not colours:
        raise TFT2VError(f"colours must be a non-empty dict {{name: (r, g, b)}}, got {colours!r}")
    out = {}
    for name, rgb in colours.items():
        if not isinstance(name, str) or not _WORD.fullmatch(name):
            raise TFT2VError(f"colour name {name!r} must be one lower-case word (a-z)")
        try:
            values = tuple(float(v) for v in rgb)
        except (TypeError, ValueError):
            raise TFT2VError(f"colour {name!r}: RGB must be three integers 0-255, got {rgb!r}") from None
        if len(values) != 3 or not all(v.is_integer() and 0 <= v <= 255 for v in values):
            raise TFT2VError(f"colour {name!r}: RGB must be three integers 0-255, got {rgb!r}")
        rgb = tuple(int(v) for v in values)
        if name in spec.COLOURS and rgb != spec.COLOURS[name]:
            raise TFT2VError(f"colour {name!r} is a spec colour {spec.COLOURS[name]}; give a new colour a new name")
        if max(rgb) < 128 or (max(rgb) - min(rgb)) < 0.5 * max(rgb):
            raise TFT2VError(f"colour {name!r} {rgb} is too dark or too grey for the shapes world "
                             "(needs a channel >= 128 and saturation (max-min)/max >= 0.5)")
        out[name] = rgb
    return out


def check_motions(motions: dict) -> dict[str, tuple[float, float]]:
    """Validate a motion set {name: (dx, dy)} (image coordinates, y down; any non-zero length)."""
    if not isinstance(motions, dict) or not motions:
        raise TFT2VError(f"motions must be a non-empty dict {{name: (dx, dy)}}, got {motions!r}")
    out = {}
    for name, vec in motions.items():
        if not isinstance(name, str) or not _WORD.fullmatch(name):
            raise TFT2VError(f"motion name {name!r} must be one lower-case word (a-z)")
        try:
            vec = tuple(float(v) for v in vec)
        except (TypeError, ValueError):
            raise TFT2VError(f"motion {name!r}: direction must be two numbers dx,dy, got {vec!r}") from None
        if len(vec) != 2 or not all(math.isfinite(v) for v in vec) or vec == (0.0, 0.0):
            raise TFT2VError(f"motion {name!r}: direction must be two finite numbers dx,dy, not both 0, got {vec!r}")
        if name in spec.MOTION_VECTORS and vec != tuple(map(float, spec.MOTION_VECTORS[name])):
            raise TFT2VError(f"motion {name!r} is a spec motion {spec.MOTION_VECTORS[name]}; give a new one a new name")
        out[name] = vec
    return out


def world_sets(extra_colours: dict | None = None, extra_motions: dict | None = None, only_extra_colours: bool = False,
               only_extra_motions: bool = False) -> tuple[dict | None, dict | None]:
    """(colours, motions) for :func:`generate`: the spec's sets plus the extra entries, or the extra entries
    alone with ``only_extra_*``; ``None`` where nothing changes (the spec world)."""
    if (only_extra_colours and not extra_colours) or (only_extra_motions and not extra_motions):
        raise TFT2VError("'only' new colours/motions needs at least one new colour/motion")
    colours = motions = None
    if extra_colours:
        colours = check_colours(extra_colours)
        colours = colours if only_extra_colours else {**spec.COLOURS, **colours}
    if extra_motions:
        motions = (check_motions(extra_motions) if only_extra_motions
                   else {**spec.MOTION_VECTORS, **check_motions(extra_motions)})
    return colours, motions


def generate(kind: str, n: int, seed: int = 0, world: ToyWorld = ToyWorld(), chunk: int = 512,
             colours: dict | None = None, motions: dict | None = None) -> ToySet:
    """Generate ``n`` samples of set ``kind`` ('images', 'videos' or 'captioned_videos'), deterministic in
    (kind, n, seed, world, colours, motions). Images are single frames (F = 1). ``colours`` {name: rgb} /
    ``motions`` {name: (dx, dy)}: the sets to draw from instead of the spec's (see :func:`world_sets`)."""
    if kind not in KINDS:
        raise TFT2VError(f"unknown toy set {kind!r}; expected one of {list(KINDS)}")
    if n < 0:
        raise TFT2VError(f"number of samples must be >= 0, got {n}")
    colours = spec.COLOURS if colours is None else check_colours(colours)
    motions = spec.MOTION_VECTORS if motions is None else check_motions(motions)
    colour_names, motion_names = tuple(colours), tuple(motions)
    rng = np.random.default_rng([seed, _KIND_STREAM[kind]])
    is_video = kind != "images"
    frames = world.frames if is_video else 1
    lo, hi = world.size_range
    combos = np.array(allowed_combos(kind, colour_names))
    pick = combos[rng.integers(0, len(combos), n)]
    colour, shape = pick[:, 0], pick[:, 1]
    obj_size = rng.uniform(lo, hi, n)
    if is_video:
        motion = rng.integers(0, len(motion_names), n)
        vmax = np.minimum(world.speed_range[1], world.max_speed(obj_size))  # per axis; ok for diagonals
        speed = rng.uniform(world.speed_range[0], vmax)
    else:
        motion = np.full(n, -1)
        speed = np.zeros(n)
    # Top-left corner of the bounding box at frame 0: anywhere the whole trajectory stays in frame.
    direction = np.array([motions[m] for m in motion_names], dtype=np.float64)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)  # unit vectors (the spec's already are)
    dxy = direction[np.maximum(motion, 0)] * speed[:, None] * (motion >= 0)[:, None]  # (n, 2) px/frame
    travel = dxy * (frames - 1)  # (n, 2)
    low = _MARGIN - np.minimum(travel, 0.0)
    high = world.size - _MARGIN - obj_size[:, None] - np.maximum(travel, 0.0)
    corner0 = low + rng.uniform(0.0, 1.0, (n, 2)) * (high - low)  # (n, 2)
    t = np.arange(frames, dtype=np.float64)
    corners = corner0[:, None, :] + t[None, :, None] * dxy[:, None, :]  # (n, F, 2)
    texture = _draw_background(rng, n, world)  # (n, H, W, 3) static per clip
    palette = np.array([colours[c] for c in colour_names], dtype=np.float32)  # (C, 3)
    track = corners + obj_size[:, None, None] / 2
    # The up-pointing triangle's area centroid is 2/3 of the way from apex to base.
    track[..., 1] += np.where(shape == spec.SHAPES.index("triangle"), obj_size / 6, 0.0)[:, None]

    out = np.empty((n, frames, world.size, world.size, 3), dtype=np.uint8)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        out[a:b] = _render(corners[a:b], obj_size[a:b], shape[a:b], colour[a:b], texture[a:b], world.size, palette)
    return ToySet(kind, out, colour, shape, obj_size, motion, speed, track, colour_names, motion_names)


def _draw_background(rng: np.random.Generator, n: int, world: ToyWorld) -> np.ndarray:
    """Dark, mildly textured backgrounds: a per-clip base level plus per-pixel noise, all ≤ background_max."""
    top = world.background_max
    base = rng.uniform(0.15 * top, 0.5 * top, (n, 1, 1, 1))
    noise = rng.uniform(0.0, 0.5 * top, (n, world.size, world.size, 3))
    return (base + noise).astype(np.float32)


def _render(corners, obj_size, shape, colour, texture, size: int, palette: np.ndarray = _COLOUR_RGB) -> np.ndarray:
    """Rasterise objects over backgrounds. corners (n, F, 2) → uint8 (n, F, H, W, 3)."""
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    half = (obj_size / 2).astype(np.float32)[:, None, None, None]  # (n, 1, 1, 1)
    cx = (corners[..., 0].astype(np.float32) + half[..., 0, 0])[..., None, None]  # (n, F, 1, 1)
    cy = (corners[..., 1].astype(np.float32) + half[..., 0, 0])[..., None, None]
    px = grid[None, None, None, :] - cx  # (n, F, 1, W)
    py = grid[None, None, :, None] - cy  # (n, F, H, 1)
    dist = np.empty((len(shape), corners.shape[1], size, size), dtype=np.float32)  # (n, F, H, W)
    for s, name in enumerate(spec.SHAPES):
        sel = shape == s
        if not sel.any():
            continue
        x, y, h = px[sel], py[sel], half[sel]
        if name == "circle":
            d = np.sqrt(x * x + y * y) - h
        elif name == "square":
            d = np.maximum(np.abs(x), np.abs(y)) - h
        else:  # triangle: apex (0, -h), base corners (±h, h); max of the three edge half-plane distances
            norm = np.float32(1.0 / np.sqrt(5.0))  # the slanted edges have outward normals (±2, -1)/√5
            d = np.maximum(np.maximum((2 * x - y - h) * norm, (-2 * x - y - h) * norm), y - h)
        dist[sel] = d
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # (n, F, H, W, 1) pixel coverage
    rgb = palette[colour][:, None, None, None, :]  # (n, 1, 1, 1, 3)
    img = texture[:, None] * (1.0 - alpha) + rgb * alpha
    return np.rint(img).astype(np.uint8)
