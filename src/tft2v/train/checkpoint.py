"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-XXXXXXXX/``:

* ``unet/`` — the non-EMA weights as a diffusers folder (``config.json`` + safetensors), always the
  FULL weights (gathered from every rank under FSDP);
* ``unet_ema/`` + ``ema.pt`` — the EMA weights beside them (when EMA is on, full as well) and the EMA's
  counters; under FSDP ``ema_rank{r}.pt`` instead of ``ema.pt``: each rank's shards of the EMA weights;
* a LoRA run (``model.lora``) writes no ``unet/`` / ``unet_ema/``: its ``lora/``, ``lora_ema/`` adapters
  and ``base.json``, the frozen base's path and fingerprint (:mod:`tft2v.train.lora_checkpoint`);
* ``optimizer.pt``, ``lr_scheduler.pt``, ``scaler.pt`` (fp16 only) — loaded with ``weights_only=True``.
  Under FSDP2 the optimizer is saved sharded by accelerate (:func:`accelerate.utils.save_fsdp_optimizer`:
  ``optimizer_0/``, a torch.distributed.checkpoint folder with SHARDED_STATE_DICT, ``optimizer.bin``
  with FULL_STATE_DICT); under DeepSpeed ``optimizer_rank{r}.pt`` (untested);
* ``rank{r}.json`` — python/numpy RNG states and the rank's data-loader position (mixing state);
  ``rank{r}_rng.pt`` — torch CPU (+ CUDA) RNG states;
* ``trainer_state.json`` (step, world size, distributed type, skipped-step counts) and ``config.yaml``
  (the resolved config).

Saving is collective: every rank calls :func:`save_checkpoint` (under FSDP the full weights, EMA ones
included, are gathered with every rank taking part). Only the main process copies full weights to host
memory: the EMA weights are read from the EMA's shadows (under FSDP2 gathered one tensor at a time, every
rank taking part), never swapped into the live weights on every rank. Writing goes to a hidden temp folder
that is renamed into place when complete, so a crash (even SIGKILL) mid-save never leaves a half checkpoint
that ``--resume auto`` would pick. Only the last ``keep_last`` checkpoints are kept; ``debug-step-*``
folders (runs stopped by non-finite steps) are never pruned or picked by ``--resume auto``. Model tensors
are ``(B, C, F, H, W)``-agnostic state dicts.
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


def is_fsdp2(accelerator) -> bool:
    """Whether ``accelerator`` shards the model with FSDP2 (``fully_shard``)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def save_checkpoint(root: str | Path, step: int, *, accelerator, model, unet, optimizer, lr_scheduler,
                    loader_state: dict, config_yaml: str, ema=None, ema_params=None, scaler=None, keep_last: int = 3,
                    debug: bool = False, write_weights=None, write_extra=None, trainer_state: dict | None = None) -> Path:
    """Write a checkpoint of every rank's state; collective (all ranks must call it). Returns its path.

    ``ema_params``: the (prepared, possibly sharded) parameters the EMA tracks — the trainable ones.
    ``write_weights(folder)``: called on every rank to write the model weights instead of ``unet/`` and
    ``unet_ema/`` (a LoRA run's adapters). ``write_extra(folder)``: called on the main process to write more
    files (a distillation's target network). ``trainer_state``: more fields for ``trainer_state.json``.
    """
    root = Path(root)
    rank, main = accelerator.process_index, accelerator.is_main_process
    final = root / checkpoint_name(step, debug)
    tmp = root / f".tmp-{final.name}"
    fsdp = is_fsdp2(accelerator)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    # Collectives first, in the same order on every rank: full weights, full EMA weights, optimizer.
    if write_weights is not None:
        write_weights(tmp)
    else:
        # accelerate's get_state_dict: the full weights (under FSDP2 gathered onto the main process, CPU; {}
        # on the others), else the model's own tensors.
        weights = accelerator.get_state_dict(model)
        weights = _cpu(weights) if main else None
        if main:
            _save_unet(unet, weights, tmp / "unet")
        if ema is not None:
            weights = _with_ema_weights(accelerator, model, ema, ema_params, weights)
            if main:
                _save_unet(unet, weights, tmp / "unet_ema")
        del weights
    if ema is not None:
        if fsdp:
            torch.save(_local_ema_state(ema), tmp / f"ema_rank{rank}.pt")
        elif main:
            torch.save(ema.state_dict(), tmp / "ema.pt")
    if fsdp:
        from accelerate.utils import save_fsdp_optimizer

        fill_lazy_adam_state(optimizer)
        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, tmp)
    elif accelerator.distributed_type.value == "DEEPSPEED":
        torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{rank}.pt")
    elif main:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")

    plain, tensors = _rng_state()
    (tmp / f"rank{rank}.json").write_text(json.dumps({"rng": plain, "loader": loader_state}))
    torch.save(tensors, tmp / f"rank{rank}_rng.pt")
    if main:
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        if write_extra is not None:
            write_extra(tmp)
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "world_size": accelerator.num_processes, "debug": debug,
             "distributed_type": accelerator.distributed_type.value, "epochs": loader_state.get("epochs", {}),
             **(trainer_state or {})}, indent=2))
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


def _with_ema_weights(accelerator, model, ema, ema_params, weights: dict | None) -> dict | None:
    """``weights`` (the main process's host copy of the full weights, None elsewhere) with every weight the
    EMA tracks replaced, in place, by its shadow. At 8 ranks a full host copy on every rank is 8 of them on
    one node (45 GB for a 1.4 B model), so nothing is swapped into the live weights: under FSDP2 every rank
    takes part in gathering each shadow (``full_tensor``), one tensor at a time, and only the main process
    copies it to host memory; unsharded, the other ranks do nothing."""
    main = accelerator.is_main_process
    if not (main or is_fsdp2(accelerator)):
        return None
    names = {id(p): n for n, p in accelerator.unwrap_model(model).named_parameters()}
    for param, shadow in zip(ema_params, ema.shadow_params):
        full = shadow.full_tensor() if hasattr(shadow, "full_tensor") else shadow  # collective under FSDP2
        if main:
            name = names[id(param)]
            weights[name] = full.detach().to("cpu", weights[name].dtype).contiguous()
        del full
    return weights


def _cpu(state_dict: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def model_class(unet) -> type:
    """``unet``'s own class: FSDP2's ``fully_shard`` swaps in a subclass (``FSDPTFT2VUNet``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return type(unet)
    return next(c for c in type(unet).__mro__ if not issubclass(c, FSDPModule))


def plain_copy(unet, weights: dict):
    """A module of ``unet``'s own class (:func:`model_class`) built from its config on the meta device (so
    nothing is drawn from the global RNG that training dropout uses) and holding ``weights`` (assigned)."""
    with torch.device("meta"):
        copy = model_class(unet).from_config(unet.config)
    copy.load_state_dict(weights, assign=True)
    return copy


def fill_lazy_adam_state(optimizer) -> None:
    """Give each trainable parameter that has not had a gradient yet (a branch or image tokens absent so
    far) the state Adam/AdamW would create at its first step: zeros, step 0 — which steps exactly like no
    state at all. torch's sharded optimizer state dict (what accelerate saves under FSDP2) refuses to
    load a checkpoint that lacks a trainable parameter's state. Other optimizers are left alone."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    if not isinstance(inner, torch.optim.Adam):  # AdamW is an Adam
        return
    for group in inner.param_groups:
        for p in group["params"]:
            if not p.requires_grad or inner.state.get(p):
                continue
            # as torch.optim.Adam._init_group creates it (the dtype of torch.optim.optimizer._get_scalar_dtype)
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 and not group["fused"] else torch.float32
            step = (torch.zeros((), dtype=dtype, device=p.device) if group["capturable"] or group["fused"]
                    else torch.tensor(0.0, dtype=dtype))
            state = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            inner.state[p] = state


def _local_ema_state(ema) -> dict:
    """``ema.state_dict()`` with this rank's shards of the (DTensor) shadow weights as plain tensors."""
    state = dict(ema.state_dict())
    state["shadow_params"] = [p.to_local().detach().cpu().clone() if hasattr(p, "to_local") else p.detach().cpu()
                              for p in state["shadow_params"]]
    return state


def _load_local_ema_state(ema, state: dict) -> None:
    """Inverse of :func:`_local_ema_state`: the saved shards go back into DTensors like ``ema``'s own."""
    from torch.distributed.tensor import DTensor

    current = ema.shadow_params
    if len(state["shadow_params"]) != len(current):
        raise CheckpointError(f"EMA checkpoint holds {len(state['shadow_params'])} tensors, the model "
                              f"{len(current)}")
    state = dict(state)
    state["shadow_params"] = [
        DTensor.from_local(local.to(p.device, p.dtype), p.device_mesh, p.placements, run_check=False,
                           shape=p.shape, stride=p.stride()) if isinstance(p, DTensor) else local.to(p.device)
        for local, p in zip(state["shadow_params"], current)]
    ema.load_state_dict(state)


def _save_unet(unet, state_dict: dict, directory: Path) -> None:
    directory.mkdir(parents=True)
    unet.save_config(directory)
    config = directory / "config.json"
    own = model_class(unet).__name__
    if json.loads(config.read_text()).get("_class_name") != own:  # FSDPTFT2VUNet under FSDP2
        config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": own}, indent=2,
                                     sort_keys=True) + "\n")
    safetensors.torch.save_file(state_dict, directory / WEIGHTS_NAME)


def load_unet_weights(path: str | Path, unet, ema: bool = False) -> None:
    """Load a checkpoint's (EMA) UNet weights into ``unet``; a mismatch names the keys."""
    f = Path(path) / ("unet_ema" if ema else "unet") / WEIGHTS_NAME
    if not f.is_file() and (Path(path) / "base.json").is_file():  # lora_checkpoint.BASE_NAME
        raise CheckpointError(f"checkpoint {path} holds a LoRA adapter, not the model: resume it with model.lora "
                              f"as in its config.yaml")
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


def load_training_state(path: str | Path, *, accelerator, optimizer, lr_scheduler, ema=None, scaler=None,
                        model=None) -> dict:
    """Restore optimizer, LR schedule, EMA, scaler and this rank's RNG; return {"step", "loader", "state"}
    (``state``: the checkpoint's ``trainer_state.json``).
    Collective under FSDP (``model``: the prepared model, needed there for the sharded optimizer).

    The UNet weights are loaded separately (:func:`load_unet_weights`) before the model is wrapped.
    """
    path, rank = Path(path), accelerator.process_index
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise CheckpointError(f"checkpoint {path} was written by {state['world_size']} processes, "
                              f"this run has {accelerator.num_processes}; exact resume needs the same number")
    fsdp_checkpoint = (path / "optimizer_0").is_dir() or (path / "optimizer.bin").is_file()
    if fsdp_checkpoint != is_fsdp2(accelerator):
        written = "with" if fsdp_checkpoint else "without"
        raise CheckpointError(f"checkpoint {path} was written {written} FSDP; resume it the same way "
                              f"(accelerate launch --config_file configs/accelerate_fsdp.yaml for FSDP)")
    if fsdp_checkpoint:
        from accelerate.utils import load_fsdp_optimizer

        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, path)
    else:
        sharded = (path / f"optimizer_rank{rank}.pt").is_file()
        optimizer.load_state_dict(_load(path / (f"optimizer_rank{rank}.pt" if sharded else "optimizer.pt")))
    lr_scheduler.load_state_dict(_load(path / "lr_scheduler.pt"))
    if ema is not None:
        if (path / f"ema_rank{rank}.pt").is_file():
            _load_local_ema_state(ema, _load(path / f"ema_rank{rank}.pt"))
        else:
            ema.load_state_dict(_load(path / "ema.pt"))
    if scaler is not None:
        scaler.load_state_dict(_load(path / "scaler.pt"))
    per_rank = json.loads((path / f"rank{rank}.json").read_text())
    _set_rng_state(per_rank["rng"], _load(path / f"rank{rank}_rng.pt"))
    return {"step": int(state["step"]), "loader": per_rank["loader"], "state": state}
