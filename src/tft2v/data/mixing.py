"""One loader that feeds both TF-T2V branches in the same optimizer step on a single device.

Each step yields ``{"step": k, "image": batch | None, "video": batch | None}``: an image micro-batch
(content branch, F = 1) and/or a video micro-batch (motion branch, F frames), in a configured
image:video ratio. The trainer runs whichever branches are present and sums their losses before one
optimizer step (VGen could only mix per GPU rank; this mixes per step).

Semi-supervision is per sample: ``has_text`` in the video batch says whether the sample keeps its
caption (a labelled video–text pair) or runs text-free with the empty caption ''. Exactly
``labelled_ratio`` of the video slots are labelled, spread evenly over the run (slot ``k`` is labelled
iff ``floor((k+1)·r) > floor(k·r)``); labelled slots are drawn from the captioned-video stream when one
is given, otherwise from the video stream with its own caption kept.

Streams are any iterables of SAMPLE dicts (``pixels`` (3, F, H, W) in [-1, 1], ``caption``,
``has_text``, ``cond_frame`` (3, H, W), ``key``, ``meta``), e.g. the sources' datasets, a
``DataLoader(ds, batch_size=None, num_workers=k)`` around one, or a toy ``ToySet.stream()`` — or a
latent cache's ``CachedSource`` streams with ``collate_fn=tft2v.data.cache.collate_cached``. A finite
stream is restarted when it ends. Collated batches are ``(B, C, F, H, W)``. The loader itself has no
randomness: shuffling and seeds live in the streams, so the whole sequence is a function of the
streams' seeds. ``state_dict()`` records how many samples each stream gave; ``load_state_dict()``
resumes at exactly the next step (streams with ``iter_from(n)`` jump there, others are fast-forwarded
by reading and dropping ``n`` samples).

With ``batched=True`` (aspect / length buckets, :mod:`tft2v.data.bucketed`) each stream yields whole
micro-batches ``{"samples": [...], "position", "epoch", "bucket"}`` whose size is the bucket's, and
the labelled / text-free choice is made per video micro-batch instead of per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from tft2v.data.media_source import collate
from tft2v.errors import TFT2VError

STREAMS = ("images", "videos", "captioned_videos")


@dataclass(frozen=True)
class MixConfig:
    """Batch sizes, the image:video step ratio and the fraction of labelled (captioned) video slots.

    ``ratio = (a, b)``: in every cycle of ``max(a, b)`` steps, ``a`` steps carry an image micro-batch
    and ``b`` a video micro-batch, spread evenly; (1, 1) gives both in every step, (1, 0) images only.
    """

    image_batch_size: int = 8
    video_batch_size: int = 4
    ratio: tuple[int, int] = (1, 1)
    labelled_ratio: float = 0.0

    def __post_init__(self) -> None:
        a, b = self.ratio
        if a < 0 or b < 0 or a + b == 0:
            raise TFT2VError(f"ratio must be two non-negative step counts, not both 0; got {self.ratio}")
        if self.image_batch_size < 1 or self.video_batch_size < 1:
            raise TFT2VError(
                f"batch sizes must be >= 1, got image {self.image_batch_size}, video {self.video_batch_size}"
            )
        if not 0.0 <= self.labelled_ratio <= 1.0:
            raise TFT2VError(f"labelled_ratio must be in [0, 1], got {self.labelled_ratio}")

    def branches_at(self, step: int) -> tuple[bool, bool]:
        """(has image batch, has video batch) at training step ``step`` (0-based)."""
        cycle = max(self.ratio)
        s = step % cycle
        return tuple(math.floor((s + 1) * n / cycle) > math.floor(s * n / cycle) for n in self.ratio)

    def is_labelled(self, slot: int) -> bool:
        """Whether video slot ``slot`` (0-based, counted over the whole run) keeps its caption."""
        r = self.labelled_ratio
        return math.floor((slot + 1) * r + 1e-9) > math.floor(slot * r + 1e-9)


class _Cursor:
    """An endless iterator over one stream that counts what it hands out.

    ``consumed`` is the stream position after the last sample handed out: a sample that carries its
    ``position`` (finite sources count skipped files there too) sets it, others count one each.
    """

    def __init__(self, name: str, stream: Iterable[dict], start: int) -> None:
        self.name, self.stream, self.consumed, self.epoch = name, stream, start, None
        if hasattr(stream, "iter_from"):
            self._it = stream.iter_from(start)
        else:
            self._it = iter(stream)
            for _ in range(start):
                self._next()

    def _next(self) -> dict:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.stream)  # a finite stream starts its next epoch
            try:
                return next(self._it)
            except StopIteration:
                raise TFT2VError(f"the {self.name} stream yielded no samples") from None

    def take(self) -> dict:
        sample = self._next()
        self.consumed = sample["position"] + 1 if "position" in sample else self.consumed + 1
        self.epoch = sample.get("epoch", self.epoch)
        return sample


class MixedLoader:
    """Endless iterator of training steps over an image stream and a video stream (see module doc)."""

    def __init__(
        self,
        images: Iterable[dict] | None,
        videos: Iterable[dict] | None,
        config: MixConfig = MixConfig(),
        captioned_videos: Iterable[dict] | None = None,
        collate_fn: Callable[[list[dict]], dict] = collate,
        batched: bool = False,
    ) -> None:
        a, b = config.ratio
        if a > 0 and images is None:
            raise TFT2VError(f"ratio {config.ratio} asks for image batches but no image stream was given")
        if b > 0 and videos is None and captioned_videos is None:
            raise TFT2VError(f"ratio {config.ratio} asks for video batches but no video stream was given")
        if videos is None and config.labelled_ratio < 1.0 and b > 0:
            raise TFT2VError("text-free video slots need a video stream (or set labelled_ratio to 1)")
        self.config, self.collate_fn, self.batched = config, collate_fn, batched
        self.streams = {"images": images, "videos": videos, "captioned_videos": captioned_videos}
        self._state = {"step": 0, "video_slots": 0, "consumed": dict.fromkeys(STREAMS, 0), "epochs": {}}

    def state_dict(self) -> dict:
        """Position after the last yielded step: steps done, video slots used, stream positions (samples
        read, skipped files included) and the epoch each stream is in (None before its first sample)."""
        return {"step": self._state["step"], "video_slots": self._state["video_slots"],
                "consumed": dict(self._state["consumed"]), "epochs": dict(self._state["epochs"])}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration starts at ``state['step']`` exactly."""
        try:
            consumed = {k: int(state["consumed"].get(k, 0)) for k in STREAMS}
            self._state = {"step": int(state["step"]), "video_slots": int(state["video_slots"]),
                           "consumed": consumed, "epochs": dict(state.get("epochs", {}))}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise TFT2VError(f"bad mixing-loader state {state!r}: {e}") from None

    def __iter__(self) -> Iterator[dict]:
        cursors = {
            name: _Cursor(name, stream, self._state["consumed"][name])
            for name, stream in self.streams.items()
            if stream is not None
        }
        cfg = self.config
        while True:
            step = self._state["step"]
            want_image, want_video = cfg.branches_at(step)
            out = {"step": step, "image": None, "video": None}
            if want_image:
                out["image"] = self.collate_fn(self._images(cursors["images"]))
            if want_video:
                out["video"] = self.collate_fn(self._videos(cursors))
            self._state["step"] = step + 1
            self._state["consumed"].update({k: c.consumed for k, c in cursors.items()})
            self._state["epochs"].update({k: c.epoch for k, c in cursors.items() if c.epoch is not None})
            yield out

    def _images(self, cursor: _Cursor) -> list[dict]:
        taken = cursor.take()["samples"] if self.batched else [
            cursor.take() for _ in range(self.config.image_batch_size)]
        for sample in taken:
            # Raw samples carry pixels, cached ones (tft2v.data.cache) the VAE posterior mean.
            frames = (sample["pixels"] if "pixels" in sample else sample["latent_mean"]).shape[1]
            if frames != 1:
                raise TFT2VError(f"image stream gave {sample['key']!r} with {frames} frames")
        return [{**s, "has_text": s["caption"] != ""} for s in taken]

    def _videos(self, cursors: dict[str, _Cursor]) -> list[dict]:
        """A video micro-batch; each slot (a sample, or with ``batched`` the whole micro-batch) is labelled
        (its caption kept, from the captioned stream when there is one) or text-free."""
        out = []
        for _ in range(1 if self.batched else self.config.video_batch_size):
            slot = self._state["video_slots"]
            self._state["video_slots"] = slot + 1
            labelled = self.config.is_labelled(slot)
            cursor = cursors.get("captioned_videos", cursors.get("videos")) if labelled else cursors["videos"]
            taken = cursor.take()
            for sample in taken["samples"] if self.batched else [taken]:
                out.append({**sample, "has_text": sample["caption"] != ""} if labelled else
                           {**sample, "caption": "", "has_text": False})
        return out
