"""How DataLoader worker processes start: ``data.worker_start``.

The default is a fork server, not a fork of the training process. A fork copies a process whose other
threads (torch's intra-op pool, FFmpeg's decoder and scaler threads, gloo's) vanish in the child while any
lock they held stays held, and a worker that touches one waits forever: in this project's test suite
forked workers hung inside PyAV's ``to_ndarray`` after earlier tests had run in the same process. A fork
server is a clean process started once, which has imported the data modules, so each worker still starts
in milliseconds. As with Python's 'spawn', a script that starts training must guard its entry point
with ``if __name__ == "__main__":`` (the fork server imports ``__main__``); the ``tft2v`` command does.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

WORKER_START_METHODS = ("forkserver", "spawn", "fork")
# Imported once by the fork server, so workers do not each import torch, PyAV and the sources.
_FORKSERVER_PRELOAD = ["__main__", "tft2v.data.sources"]


def worker_context(method: str):
    """The multiprocessing context DataLoader workers start from (``method``: one of WORKER_START_METHODS).

    With 'forkserver' the server starts now, so its imports overlap whatever the caller does before the
    first batch (building the model).
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)  # no effect once the server runs
        multiprocessing.forkserver.ensure_running()
    return ctx
