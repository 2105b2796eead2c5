"""Tiny training configs shared by the trainer tests: 16x16 shapes, 4 frames, width 8, batches of 2."""

from __future__ import annotations

from pathlib import Path

from tft2v.config import load_config


def tiny_overrides(out_dir, **extra) -> list[str]:
    """``--set`` strings for a run that takes well under a second per step on one CPU core."""
    sets = {
        "out_dir": str(out_dir),
        "data.toy_images": 16, "data.toy_videos": 16, "data.toy_captioned_videos": 8,
        "data.toy_object_size": "[3, 6]",
        "data.height": 16, "data.width": 16, "data.num_frames": 4,
        "data.image_batch_size": 2, "data.video_batch_size": 2,
        "model.unet": "{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5],"
                      " head_dim: 8, init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0,"
                      " image_embed_dim: null, dropout: 0.0, temporal_conv_dropout: 0.0, condition_encoder_dropout: 0.0}",
        "encoder.args": "{text_dim: 16, image_dim: 32, max_length: 4}",
        "recipe.image_tokens_on_videos": False,
        "optim.lr": 1e-3, "optim.warmup_steps": 1,
        "train.max_steps": 3, "train.log_every": 1, "train.checkpoint_every": 0,
        "train.progress": False, "train.trackers": "[]", "train.export": False,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def tiny_config(out_dir, **extra):
    return load_config(None, tiny_overrides(out_dir, **extra))


def kill_after_checkpoint(cmd: list[str], run_dir, name: str, cwd, env) -> list:
    """Start ``cmd`` (a training run writing to ``run_dir``), SIGKILL it once its newest checkpoint is
    ``name`` or later, and return the checkpoints it left (oldest first)."""
    import signal
    import subprocess
    import time

    from tft2v.train.checkpoint import list_checkpoints

    ckpts = Path(run_dir) / "checkpoints"
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not list_checkpoints(ckpts) or list_checkpoints(ckpts)[-1].name < name):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return list_checkpoints(ckpts)
