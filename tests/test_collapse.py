"""The distillation collapse guard on synthetic clips: solid colours, black frames after the first, a flat frame,
and healthy shapes-world clips that must pass."""

from __future__ import annotations

import torch

from tft2v.data.toy import ToyWorld, generate
from tft2v.train.collapse import CollapseWatch, collapse_signs, describe


def shapes_clip(seed: int = 0) -> torch.Tensor:
    """(1, 3, 8, 32, 32) in [-1, 1]: a real shapes-world video."""
    sample = generate("videos", 1, seed=seed, world=ToyWorld(size=32, frames=8)).sample(0)
    return sample["pixels"][None].float()


def test_healthy_shapes_clips_show_no_sign():
    for seed in range(4):
        signs = collapse_signs(shapes_clip(seed))[0]
        assert signs == {"constant": [], "black": [], "flat": []}, seed


def test_solid_colour_black_and_flat_frames_are_found():
    clip = shapes_clip().repeat(3, 1, 1, 1, 1)  # (3, 3, 8, 32, 32)
    clip[0] = torch.tensor([0.2, -0.5, 0.9]).view(3, 1, 1, 1)  # a solid colour everywhere
    clip[1, :, 3:] = -1.0  # black from frame 3 on
    clip[2, :, 5] = 0.3 + 0.002 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))  # flat grey
    first, second, third = collapse_signs(clip)
    assert first["constant"] == list(range(8)) and first["flat"] == list(range(8)) and first["black"] == []
    assert second["black"] == [3, 4, 5, 6, 7] and second["constant"] == [3, 4, 5, 6, 7]
    assert third["flat"] == [5] and third["constant"] == [5] and third["black"] == []
    assert describe(second) == "frames 3-7 one colour; frames 3-7 black; frames 3-7 std near 0"


def test_a_black_first_frame_alone_is_not_black_frames_after_the_first():
    clip = shapes_clip()
    clip[:, :, 0] = -1.0
    assert collapse_signs(clip)[0]["black"] == []


def test_watch_reports_the_step_the_collapse_started_and_clears_on_recovery():
    watch = CollapseWatch()
    healthy, black = shapes_clip(), shapes_clip().clone()
    black[:, :, 1:] = -1.0
    assert watch.check(100, {"'a red circle' at 4 steps": healthy}) is None and watch.since is None
    line = watch.check(200, {"'a red circle' at 4 steps": black, "'a blue square' at 4 steps": healthy})
    assert line.startswith("warning: validation at step 200 looks collapsed (since step 200)")
    assert "'a red circle' at 4 steps: frames 1-7 one colour; frames 1-7 black" in line and "blue square" not in line
    assert "since step 200" in watch.check(300, {"x": black}) and watch.since == 200
    assert watch.check(400, {"x": healthy}) is None and watch.since is None
    assert "since step 7" in CollapseWatch(since=7).check(500, {"x": black})  # as resumed from a checkpoint
