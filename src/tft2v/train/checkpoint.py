"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-XXXXXXXX/``:

* ``unet/`` — the non-EMA weights as a diffusers folder (``config.json`` + safetensors);
* ``unet_ema/`` + ``ema.pt`` — the EMA weights beside them (when EMA is on) and the EMA's counters;
* ``optimizer.pt`` (``optimizer_rank{r}.pt`` when the optimizer is sharded), ``lr_scheduler.pt``,
  ``scaler.pt`` (fp16 only) — loaded with ``weights_only=True``;
* ``rank{r}.json`` — python/numpy RNG states and the rank's data-loader position (mixing state);
  ``rank{r}_rng.pt`` — torch CPU (+ CUDA) RNG states;
* ``trainer_state.json`` (step, world size) and ``config.yaml`` (the resolved config).

Writing goes to a hidden temp folder that is renamed into place when complete, so a crash (even
SIGKILL) mid-save never leaves a half checkpoint that ``--resume auto`` would pick. Only the last
``keep_last`` checkpoints are kept; ``debug-step-*`` folders (NaN stops) are never pruned or resumed.
Model tensors are ``(B, C, F, H, W)``-agnostic state dicts.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from tft2v.errors import CheckpointError

PREFIX = "step-"
DEBUG_PREFIX = "debug-step-"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int, debug: bool = False) -> str:
    return f"{DEBUG_PREFIX if debug else PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete (renamed-into-place) checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """``auto`` → the newest checkpoint of ``run_dir`` (none: an error); ``auto-or-new`` → the same, None if
    there is none (start a new run); a run folder → its newest; a checkpoint folder → itself."""
    if resume in ("auto", "auto-or-new"):
        root = Path(run_dir) / "checkpoints"
        found = list_checkpoints(root)
        if found:
            return found[-1]
        if resume == "auto":  # a typo'd --out must not silently train from scratch
            raise CheckpointError(f"--resume auto: no checkpoint in {root}; pass --resume auto-or-new to start "
                                  f"a new run when there is none")
        return None
    path = Path(resume)
    if (path / "trainer_state.json").is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise CheckpointError(f"--resume {resume}: no checkpoint found there")
    return found[-1]


def _rng_state() -> tuple[dict, dict]:
    """(JSON-able python/numpy states, torch tensor states) of this process."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def _set_rng_state(plain: dict, tensors: dict) -> None:
    v, state, gauss = plain["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


@contextmanager
def ema_weights(ema, params: list[torch.nn.Parameter]):
    """Inside the block ``params`` hold ``ema``'s shadow weights; on exit (errors included) they get
    their training values back bit-exactly. ``ema=None`` leaves the weights alone."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def save_checkpoint(root: str | Path, step: int, *, accelerator, model, unet, optimizer, lr_scheduler,
                    loader_state: dict, config_yaml: str, ema=None, ema_params=None, scaler=None, keep_last: int = 3,
                    debug: bool = False) -> Path:
    """Write a checkpoint of every rank's state; collective (all ranks must call it). Returns its path."""
    root = Path(root)
    rank, main = accelerator.process_index, accelerator.is_main_process
    final = root / checkpoint_name(step, debug)
    tmp = root / f".tmp-{final.name}"
    state_dict = accelerator.get_state_dict(model)  # full weights, gathered under FSDP/DeepSpeed
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    plain, tensors = _rng_state()
    (tmp / f"rank{rank}.json").write_text(json.dumps({"rng": plain, "loader": loader_state}))
    torch.save(tensors, tmp / f"rank{rank}_rng.pt")
    sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    if sharded:
        torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{rank}.pt")
    if main:
        _save_unet(unet, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / "unet")
        if ema is not None:
            # ``ema_params``: the parameters the EMA tracks (only the trainable ones)
            with ema_weights(ema, ema_params):
                _save_unet(unet, {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()},
                           tmp / "unet_ema")
            torch.save(ema.state_dict(), tmp / "ema.pt")
        if not sharded:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "world_size": accelerator.num_processes, "debug": debug,
             "epochs": loader_state.get("epochs", {})}, indent=2))
    accelerator.wait_for_everyone()
    if main:
        if final.exists():  # re-saving a step (e.g. after a resume): swap the old one out first
            old = root / f".old-{final.name}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears complete or not at all
        if not debug:
            for stale in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _save_unet(unet, state_dict: dict, directory: Path) -> None:
    directory.mkdir(parents=True)
    unet.save_config(directory)
    safetensors.torch.save_file(state_dict, directory / WEIGHTS_NAME)


def load_unet_weights(path: str | Path, unet, ema: bool = False) -> None:
    """Load a checkpoint's (EMA) UNet weights into ``unet``; a mismatch names the keys."""
    f = Path(path) / ("unet_ema" if ema else "unet") / WEIGHTS_NAME
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} has no {f.parent.name}/{WEIGHTS_NAME}")
    state = safetensors.torch.load_file(f)
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same keys, different shapes
        raise CheckpointError(f"checkpoint {path} does not match the model: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None


def load_training_state(path: str | Path, *, accelerator, optimizer, lr_scheduler, ema=None, scaler=None) -> dict:
    """Restore optimizer, LR schedule, EMA, scaler and this rank's RNG; return {"step", "loader"}.

    The UNet weights are loaded separately (:func:`load_unet_weights`) before the model is wrapped.
    """
    path, rank = Path(path), accelerator.process_index
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise CheckpointError(f"checkpoint {path} was written by {state['world_size']} processes, "
                              f"this run has {accelerator.num_processes}; exact resume needs the same number")
    sharded = (path / f"optimizer_rank{rank}.pt").is_file()
    optimizer.load_state_dict(_load(path / (f"optimizer_rank{rank}.pt" if sharded else "optimizer.pt")))
    lr_scheduler.load_state_dict(_load(path / "lr_scheduler.pt"))
    if ema is not None:
        ema.load_state_dict(_load(path / "ema.pt"))
    if scaler is not None:
        scaler.load_state_dict(_load(path / "scaler.pt"))
    per_rank = json.loads((path / f"rank{rank}.json").read_text())
    _set_rng_state(per_rank["rng"], _load(path / f"rank{rank}_rng.pt"))
    return {"step": int(state["step"]), "loader": per_rank["loader"]}
