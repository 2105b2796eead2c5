"""Training losses as pure functions of predictions and targets.

Tensor layout: ``pred`` and ``target`` are ``(B, C, F, H, W)`` in the model's prediction space (ε or v).
"""

from __future__ import annotations

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision predictions are compared in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over C·F·H·W (VGen ``DiffusionDDIM.loss``): returns (B,)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return (_upcast(pred) - _upcast(target)).pow(2).flatten(1).mean(dim=1)


def temporal_coherence_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """TF-T2V temporal coherence loss: the adjacent-frame differences of the prediction must match
    those of the target, ``mean(((pred[:,:,1:]−pred[:,:,:-1]) − (tgt[:,:,1:]−tgt[:,:,:-1]))²)``.

    Zero (with a graph) for 1-frame inputs. ``reduction="none"`` gives the per-sample value (B,).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim != 5:
        raise ValueError(f"expected (B, C, F, H, W) tensors, got shape {tuple(pred.shape)}")
    residual = _upcast(pred) - _upcast(target)
    if residual.shape[2] < 2:
        per_sample = residual.flatten(1).sum(dim=1) * 0.0
    else:
        # (dp − dt) = Δ(pred − target) along frames: (B, C, F−1, H, W)
        per_sample = torch.diff(residual, dim=2).pow(2).flatten(1).mean(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def tft2v_loss(
    pred: torch.Tensor, target: torch.Tensor, coherence_weight: float = 0.1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_base + λ·L_coh`` for one batch of same-length clips; returns (scalar loss, parts)."""
    base = diffusion_loss(pred, target).mean()
    coh = temporal_coherence_loss(pred, target)
    total = base + coherence_weight * coh if coherence_weight else base
    return total, {"base": base.detach(), "coherence": coh.detach()}
