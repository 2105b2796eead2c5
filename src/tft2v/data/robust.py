"""Skip accounting: every sample a source cannot use is skipped, classified by reason and counted.

Counters live in shared memory, so skips in DataLoader worker processes (fork or spawn) show up in
the parent's ``source.stats``. The first few skips of each reason are logged with the file that caused them.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import tarfile
import zipfile

import av
from PIL import Image, UnidentifiedImageError
from torch.utils.data import get_worker_info

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
    """Process-shared counters: ``ok`` plus one per skip reason. ``as_dict()`` gives reason → count.

    One row of lock-free shared memory per process (row 0: the main process, row 1 + i: DataLoader
    worker i), each written by its own process only, so increments never race and no lock needs to
    cross a fork/spawn boundary. ``as_dict`` sums the rows.
    """

    def __init__(self, max_workers: int = 64) -> None:
        self._width = len(SKIP_REASONS) + 1  # column 0 is "ok"
        self._rows = max_workers + 1
        self._counts = mp.RawArray("q", self._rows * self._width)
        self.examples: dict[str, list[str]] = {}  # reason → first few "key: detail" (this process only)

    def _add(self, column: int) -> None:
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (self._rows - 1)
        self._counts[row * self._width + column] += 1

    def add_ok(self) -> None:
        self._add(0)

    def add_skip(self, reason: str, key: str, detail: str = "") -> None:
        self._add(1 + SKIP_REASONS.index(reason))
        seen = self.examples.setdefault(reason, [])
        if len(seen) < _LOGGED_PER_REASON:
            detail = detail.splitlines()[0][:200] if detail else ""
            seen.append(f"{key}: {detail}")
            log.warning("skipped %s (%s): %s", key, reason, detail)

    def as_dict(self) -> dict[str, int]:
        """``{"ok": n, "<reason>": n, ...}`` including zero counts, in SKIP_REASONS order."""
        flat = list(self._counts[:])
        totals = [sum(flat[c :: self._width]) for c in range(self._width)]
        return {"ok": totals[0], **{r: totals[i + 1] for i, r in enumerate(SKIP_REASONS)}}

    @property
    def skipped(self) -> int:
        return sum(v for k, v in self.as_dict().items() if k != "ok")

    def reset(self) -> None:
        for i in range(len(self._counts)):
            self._counts[i] = 0
        self.examples.clear()

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.as_dict().items() if v}
        return f"SkipStats({nonzero})"
