"""The check that keeps a non-finite step from reaching the weights (:meth:`Trainer.train_step`).

It runs on the step's last micro-batch, after the backward and before ``optimizer.step()``, so a step
with a NaN/inf loss or gradient can be skipped with every weight, the optimizer and the EMA untouched
(checking after the step, as before, left the bad update in the weights and in the debug checkpoint).
"""

from __future__ import annotations

import math

import torch


def step_is_finite(accelerator, model, params, loss: float, max_grad_norm: float) -> tuple[float | None, bool]:
    """(gradient norm or None, whether every rank's loss and gradients are finite). Clips when
    ``max_grad_norm`` > 0 and then the norm is the check; without clipping each gradient is checked
    (``torch.isfinite``; only then, it costs a pass over them). Under fp16 the GradScaler itself skips
    steps whose gradients overflow (and lowers its scale), which is no fault of the model: only the loss
    counts there. Reduced over ranks (one all-reduce of one number), so every rank skips the same steps —
    a rank that skipped alone would leave the others waiting in the next collective."""
    grad_norm, ok = None, math.isfinite(loss)
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        grad_norm = None if norm is None else float(norm)  # None under DeepSpeed
        if accelerator.scaler is None and grad_norm is not None:
            ok = ok and math.isfinite(grad_norm)
    elif accelerator.scaler is None:
        ok = ok and _grads_finite(params)
    bad = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), "sum")
    return grad_norm, bool(bad.item() == 0)


def _grads_finite(params) -> bool:
    """Whether this rank's gradients (its shards under FSDP2) are all finite."""
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
