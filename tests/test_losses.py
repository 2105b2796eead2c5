"""Diffusion loss and the temporal coherence loss (SPEC §1)."""

import pytest
import torch

from tft2v.losses import diffusion_loss, temporal_coherence_loss, tft2v_loss


def test_zero_when_prediction_equals_target():
    x = torch.randn(2, 4, 5, 3, 3)
    assert diffusion_loss(x, x).abs().max() == 0
    assert temporal_coherence_loss(x, x) == 0


def test_coherence_zero_for_single_frame_but_keeps_graph():
    pred = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    loss = temporal_coherence_loss(pred, torch.randn(2, 4, 1, 3, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().max() == 0


def test_known_answer_linear_drift():
    """pred = target + a·j (j = frame index): every adjacent difference is off by a → L_coh = a²;
    a constant offset c over frames gives L_coh = 0 but L_base = c²."""
    tgt = torch.randn(2, 3, 6, 4, 4)
    drift = 0.5 * torch.arange(6.0).view(1, 1, 6, 1, 1)
    assert torch.allclose(temporal_coherence_loss(tgt + drift, tgt), torch.tensor(0.25))
    assert temporal_coherence_loss(tgt + 0.3, tgt).abs() < 1e-12
    assert torch.allclose(diffusion_loss(tgt + 0.3, tgt), torch.full((2,), 0.09))


def test_matches_spec_formula_and_per_sample():
    pred, tgt = torch.randn(3, 4, 5, 2, 2), torch.randn(3, 4, 5, 2, 2)
    spec = (((pred[:, :, 1:] - pred[:, :, :-1]) - (tgt[:, :, 1:] - tgt[:, :, :-1])) ** 2)
    assert torch.allclose(temporal_coherence_loss(pred, tgt), spec.mean())
    assert torch.allclose(temporal_coherence_loss(pred, tgt, reduction="none"), spec.flatten(1).mean(1))


def test_gradient_matches_analytic():
    pred = torch.randn(1, 1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    tgt = torch.zeros(1, 1, 3, 1, 1, dtype=torch.float64)
    temporal_coherence_loss(pred, tgt).backward()
    p = pred.detach().flatten()
    d1, d2 = p[1] - p[0], p[2] - p[1]
    expected = torch.tensor([-d1, d1 - d2, d2])  # d/dp of (d1² + d2²)/2
    assert torch.allclose(pred.grad.flatten().float(), expected.float(), atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: temporal_coherence_loss(x, tgt), (pred,))


def test_total_loss_weighting():
    pred, tgt = torch.randn(2, 4, 4, 3, 3), torch.randn(2, 4, 4, 3, 3)
    total, parts = tft2v_loss(pred, tgt, coherence_weight=0.1)
    assert torch.allclose(total, parts["base"] + 0.1 * parts["coherence"])
    total0, _ = tft2v_loss(pred, tgt, coherence_weight=0.0)
    assert torch.allclose(total0, parts["base"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        temporal_coherence_loss(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 3, 1, 1))
