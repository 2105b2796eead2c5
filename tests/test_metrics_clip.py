"""CLIPSIM and frame consistency with a tiny random CLIPModel and a toy BPE tokenizer."""

import pytest
import torch
from transformers import CLIPModel

from metrics_reference import write_tiny_clip
from tft2v.errors import TFT2VError
from tft2v.metrics.clip_metrics import CLIPScorer
from tft2v.metrics.evaluate import evaluate_videos


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def _videos(n, frames, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, frames, size, size, generator=g) * 2 - 1


def test_static_video_has_consistency_one(clip_dir):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    static = _videos(2, 1, 0).repeat(1, 1, 5, 1, 1)  # (2, 3, 5, 32, 32), all frames equal
    torch.testing.assert_close(scorer.frame_consistency(static), torch.ones(2))
    changing = scorer.frame_consistency(_videos(2, 5, 1))
    assert (changing < 0.999).all()
    res = evaluate_videos(static, clip=scorer)
    assert res["frame_consistency_x100"] == pytest.approx(100.0, abs=1e-3)
    assert res["skipped"]["clipsim"] == "no prompts given"


def test_clipsim_equals_clip_cosine(clip_dir):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    videos = _videos(2, 3, 2)
    prompts = ["a red circle moving left", "a blue square"]
    sims = scorer.clipsim(videos, prompts)
    assert sims.shape == (2,) and sims.abs().max() <= 1
    # Reference: CLIPModel's own logits divided by its temperature are the text–image cosines.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = scorer.tokenizer(prompts, padding=True, return_tensors="pt")
    expected = []
    for b in range(2):
        pixels = scorer._pixels(videos[b].transpose(0, 1))  # (F, 3, 32, 32)
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"][b : b + 1], attention_mask=tokens["attention_mask"][b : b + 1],
                        pixel_values=pixels)
        expected.append((out.logits_per_image[:, 0] / model.logit_scale.exp()).mean())
    torch.testing.assert_close(sims, torch.stack(expected), rtol=1e-4, atol=1e-5)
    res = evaluate_videos(videos, prompts=[prompts[0], None], clip=scorer)
    assert res["clipsim"] == pytest.approx(float(sims[0]), abs=1e-6)  # only prompted clips count
    assert res["clipsim_x100"] == pytest.approx(100 * res["clipsim"])


def test_preprocessing_resizes_and_crops(clip_dir):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    wide = _videos(1, 2, 3, size=64)[..., :48]  # (1, 3, 2, 64, 48) → shorter side 48 → 32
    assert scorer.frame_embeds(wide).shape == (1, 2, 16)
    x = scorer._pixels(torch.zeros(1, 3, 20, 60))
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 0, 0], (0.5 - scorer.mean.flatten()) / scorer.std.flatten())


def test_bad_input(clip_dir, tmp_path):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    with pytest.raises(TFT2VError, match="prompts"):
        scorer.clipsim(_videos(2, 2, 0), ["one prompt"])
    with pytest.raises(TFT2VError, match="at least 2 frames"):
        scorer.frame_consistency(_videos(1, 1, 0))
    with pytest.raises(TFT2VError, match="config.json"):
        CLIPScorer.from_pretrained(tmp_path)
