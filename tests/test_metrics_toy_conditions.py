"""tft2v.metrics.toy_conditions: does a generated clip follow the clip its condition came from?"""

import pytest
import torch

from tft2v.errors import TFT2VError
from tft2v.metrics.toy import analyse_clip
from tft2v.metrics.toy_conditions import TRACK_TOLERANCE, follow_condition, summarise_following

from tests.toy_drawing import BACKGROUND, draw

TRACK = [(8.0 + 1.5 * t, 16.0) for t in range(8)]  # rightwards, 1.5 px/frame


def _follow(centres, motion="right", track=TRACK):
    return follow_condition(analyse_clip(draw("circle", "red", centres)), motion, track)


def test_the_condition_clip_itself_follows_and_stays_on_track():
    f = _follow(TRACK)
    assert f["follows"] and f["on_track"] and f["track_error"] < 0.5


def test_a_still_clip_does_not_follow_even_on_the_track():
    middle = TRACK[len(TRACK) // 2]
    f = _follow([middle] * len(TRACK))
    assert not f["follows"] and f["track_error"] > 2.0
    assert not _follow([TRACK[0]] * len(TRACK))["follows"]


def test_a_clip_moving_against_the_condition_does_not_follow():
    f = _follow(TRACK[::-1])
    assert not f["follows"] and not f["on_track"]


def test_the_right_direction_elsewhere_in_the_frame_follows_but_is_off_track():
    f = _follow([(x, y - 10) for x, y in TRACK])
    assert f["follows"] and not f["on_track"] and f["track_error"] == pytest.approx(10, abs=0.5)
    assert TRACK_TOLERANCE < 10


def test_an_empty_clip_is_neither_following_nor_on_track():
    empty = torch.full((3, 8, 32, 32), BACKGROUND / 127.5 - 1)
    f = follow_condition(analyse_clip(empty), "right", TRACK)
    assert f == {"condition_motion": "right", "follows": False, "track_error": None, "on_track": False}
    s = summarise_following([f, _follow(TRACK)])
    assert s["follow_accuracy"] == 0.5 and s["on_track_fraction"] == 0.5 and s["track_error"] < 0.5


def test_a_track_of_another_length_is_an_error():
    with pytest.raises(TFT2VError, match="condition track"):
        _follow(TRACK, track=TRACK[:4])
