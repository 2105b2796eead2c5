"""Skip accounting: every sample a source cannot use is skipped, classified by reason and counted.

Counters live in shared memory, so skips in DataLoader worker processes show up in the parent's
``source.stats``. The first few skips of each reason are logged with the file that caused them.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import zipfile
import tarfile

import av
from PIL import Image, UnidentifiedImageError

from tft2v.data.image_io import NotAnImageError
from tft2v.data.video_io import ClipTooShortError, DecodeTimeoutError, NotAVideoError

log = logging.getLogger("tft2v.data")

# Why a sample was skipped. Order is the layout of the shared counter array.
SKIP_REASONS = (
    "missing",      # path does not exist
    "empty",        # zero-length file
    "unreadable",   # permission denied, a directory, I/O error
    "corrupt",      # the decoder or demuxer rejects the data (includes truncated files)
    "wrong_type",   # a valid file of the other kind (video in an image set, audio-only, still image)
    "too_short",    # fewer frames than the clip needs
    "timeout",      # decoding ran past its time budget
    "bad_shard",    # a tar shard that cannot be opened or ends mid-member
)
_LOGGED_PER_REASON = 5


class SampleSkipped(Exception):
    """Raised inside a source for a sample that must be skipped, carrying the reason."""

    def __init__(self, reason: str, detail: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def classify(exc: BaseException) -> str:
    """Map an exception raised while reading one sample to a skip reason."""
    if isinstance(exc, SampleSkipped):
        return exc.reason
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
        return "missing"
    if isinstance(exc, (DecodeTimeoutError, TimeoutError, av.error.ExitError)):
        return "timeout"
    if isinstance(exc, ClipTooShortError):
        return "too_short"
    if isinstance(exc, (NotAVideoError, NotAnImageError)):
        return "wrong_type"
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError)):
        return "unreadable"
    if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile)):
        return "bad_shard"
    if isinstance(exc, (av.FFmpegError, UnidentifiedImageError, Image.DecompressionBombError,
                        SyntaxError, EOFError, ValueError, IndexError, KeyError, ZeroDivisionError)):
        return "corrupt"  # PIL raises SyntaxError/EOFError/ValueError for damaged headers and data
    if isinstance(exc, OSError):
        # PIL reports truncated images as plain OSError; real I/O errors carry an errno.
        return "unreadable" if getattr(exc, "errno", None) else "corrupt"
    # Anything else came out of a decoder on odd data; training must go on, so it is a corrupt sample
    # (the log line names the exception type, so a real bug stays visible).
    return "corrupt"


class SkipStats:
    """Process-shared counters: ``ok`` plus one per skip reason. ``as_dict()`` gives reason → count."""

    def __init__(self) -> None:
        self._counts = mp.Array("q", len(SKIP_REASONS) + 1)  # slot 0 is "ok"
        self.examples: dict[str, list[str]] = {}  # reason → first few "key: detail" (this process only)

    def add_ok(self) -> None:
        with self._counts.get_lock():
            self._counts[0] += 1

    def add_skip(self, reason: str, key: str, detail: str = "") -> None:
        with self._counts.get_lock():
            self._counts[1 + SKIP_REASONS.index(reason)] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < _LOGGED_PER_REASON:
            detail = detail.splitlines()[0][:200] if detail else ""
            seen.append(f"{key}: {detail}")
            log.warning("skipped %s (%s): %s", key, reason, detail)

    def as_dict(self) -> dict[str, int]:
        """``{"ok": n, "<reason>": n, ...}`` including zero counts, in SKIP_REASONS order."""
        values = list(self._counts[:])
        return {"ok": values[0], **{r: values[i + 1] for i, r in enumerate(SKIP_REASONS)}}

    @property
    def skipped(self) -> int:
        return sum(self._counts[1:])

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(self._counts)):
                self._counts[i] = 0
        self.examples.clear()

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.as_dict().items() if v}
        return f"SkipStats({nonzero})"
