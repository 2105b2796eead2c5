"""Checkpoints: atomic rename, keep-last-N, resume resolution, RNG and state round trips, mismatch errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from tft2v.errors import CheckpointError
from tft2v.models import TFT2VUNet
from tft2v.train import checkpoint as ck


def parts(seed=0):
    torch.manual_seed(seed)
    unet = TFT2VUNet(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                     attention_scales=(), head_dim=8, init_temporal_heads=1, context_dim=8, image_embed_dim=None,
                     norm_num_groups=4, condition_channels=0)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return unet, opt, sched


def one_step(unet, opt, sched):
    loss = sum(p.square().sum() for p in unet.parameters())
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def save(root, step, unet, opt, sched, keep_last=3, debug=False):
    acc = Accelerator(cpu=True)
    return ck.save_checkpoint(root, step, accelerator=acc, model=unet, unet=unet, optimizer=opt, lr_scheduler=sched,
                              loader_state={"step": step}, config_yaml="seed: 0\n", keep_last=keep_last, debug=debug)


def test_round_trip_restores_everything(tmp_path):
    unet, opt, sched = parts()
    one_step(unet, opt, sched)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    path = save(tmp_path, 1, unet, opt, sched)
    expected = (torch.rand(3), random.random(), np.random.rand())
    one_step(unet, opt, sched)  # move on, then go back

    unet2, opt2, sched2 = parts(seed=1)
    ck.load_unet_weights(path, unet2)
    state = ck.load_training_state(path, accelerator=Accelerator(cpu=True), optimizer=opt2, lr_scheduler=sched2)
    assert (state["step"], state["loader"], state["state"]["world_size"]) == (1, {"step": 1}, 1)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]
    unet3, opt3, sched3 = parts()
    one_step(unet3, opt3, sched3)
    one_step(unet3, opt3, sched3)
    one_step(unet2, opt2, sched2)
    for a, b in zip(unet2.parameters(), unet3.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched3.get_last_lr()


def test_keep_last_debug_and_resolve(tmp_path):
    unet, opt, sched = parts()
    for step in (1, 2, 3):
        save(tmp_path / "run/checkpoints", step, unet, opt, sched, keep_last=2)
    save(tmp_path / "run/checkpoints", 4, unet, opt, sched, keep_last=2, debug=True)
    (tmp_path / "run/checkpoints/.tmp-step-00000009").mkdir()  # a save killed mid-write
    names = [p.name for p in ck.list_checkpoints(tmp_path / "run/checkpoints")]
    assert names == ["step-00000002", "step-00000003"]
    assert (tmp_path / "run/checkpoints/debug-step-00000004").is_dir()
    assert ck.resolve_resume("auto", tmp_path / "run").name == "step-00000003"
    assert ck.resolve_resume(str(tmp_path / "run"), "unused").name == "step-00000003"
    step2 = tmp_path / "run/checkpoints/step-00000002"
    assert ck.resolve_resume(str(step2), "unused") == step2
    assert ck.resolve_resume("auto-or-new", tmp_path / "run").name == "step-00000003"
    assert ck.resolve_resume("auto-or-new", tmp_path / "fresh") is None
    with pytest.raises(CheckpointError, match="no checkpoint in .*auto-or-new"):
        ck.resolve_resume("auto", tmp_path / "fresh")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.resolve_resume(str(tmp_path / "fresh"), "unused")


def test_resave_same_step_replaces(tmp_path):
    unet, opt, sched = parts()
    save(tmp_path, 1, unet, opt, sched)
    one_step(unet, opt, sched)
    path = save(tmp_path, 1, unet, opt, sched)
    other, _, _ = parts(seed=3)
    ck.load_unet_weights(path, other)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), unet.parameters()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def test_mismatch_errors(tmp_path):
    unet, opt, sched = parts()
    path = save(tmp_path, 1, unet, opt, sched)
    bigger = TFT2VUNet(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_scales=(), head_dim=8, init_temporal_heads=1, context_dim=8, image_embed_dim=None,
                       norm_num_groups=4, condition_channels=0)
    with pytest.raises(CheckpointError, match="does not match"):
        ck.load_unet_weights(path, bigger)
    with pytest.raises(CheckpointError, match="unet_ema"):
        ck.load_unet_weights(path, unet, ema=True)
    (path / "trainer_state.json").write_text('{"step": 1, "world_size": 4, "debug": false}')
    with pytest.raises(CheckpointError, match="4 processes"):
        ck.load_training_state(path, accelerator=Accelerator(cpu=True), optimizer=opt, lr_scheduler=sched)


def test_filled_lazy_adam_state_steps_like_no_state():
    """Under FSDP the optimizer is saved through torch's sharded state dict, which needs a state for every
    trainable parameter: fill_lazy_adam_state gives the ones without a gradient so far zeros and step 0,
    and training then goes on bit-exactly as without it (unused parameters stay untouched)."""
    runs = []
    for fill in (False, True):
        torch.manual_seed(0)
        used, later, never = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
        opt = torch.optim.AdamW([used, later, never], lr=1e-2, weight_decay=0.1)
        for step in range(4):
            loss = used.square().sum() + (later.sin().sum() if step >= 2 else 0)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step == 1 and fill:
                ck.fill_lazy_adam_state(opt)
                assert set(opt.state) == {used, later, never}
                assert float(opt.state[later]["step"]) == 0 and not opt.state[later]["exp_avg"].any()
        runs.append([used.detach().clone(), later.detach().clone(), never.detach().clone()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_sharded_checkpoint_refused_without_fsdp(tmp_path):
    unet, opt, sched = parts()
    path = save(tmp_path, 1, unet, opt, sched)
    (path / "optimizer_0").mkdir()  # what accelerate's save_fsdp_optimizer writes under FSDP2
    with pytest.raises(CheckpointError, match="written with FSDP"):
        ck.load_training_state(path, accelerator=Accelerator(cpu=True), optimizer=opt, lr_scheduler=sched)
