"""Depth conditions: loading a tiny local depth network (TorchScript or state dict), VGen scaling."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tft2v.data.conditions import extract_conditions
from tft2v.data.conditions_depth import DepthEstimator, load_depth_model, luminance
from tft2v.errors import CheckpointError, TFT2VError


class TinyDepth(nn.Module):
    """A 1x1-conv "depth" network: raw = 40·(mean RGB + 1), so bright pixels come out near."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.proj.weight.fill_(40 / 3)
            self.proj.bias.fill_(40.0)

    def forward(self, x):
        return self.proj(x).squeeze(1)  # (N, h, w): also exercises the 3-D output path


@pytest.fixture
def video():
    x = torch.full((2, 3, 4, 16, 24), -1.0)
    x[:, :, :, 4:8, 4:12] = 1.0  # a bright box
    return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model_loads_and_scales_like_vgen(tmp_path, video):
    path = tmp_path / "depth.pt"
    torch.jit.script(TinyDepth()).save(str(path))
    depth = load_depth_model(path)(video)
    assert depth.shape == (2, 1, 4, 16, 24)
    # raw 80 on the box → 80/20 = 4; raw 0 elsewhere → 0; clamp at 10 not reached
    assert depth[:, :, :, 5, 6].allclose(torch.tensor(4.0)) and depth[:, :, :, 12, 20].abs().max() < 1e-5
    clamped = load_depth_model(path, depth_clamp=2.0)(video)
    assert clamped.max() == pytest.approx(2.0)
    via_path = extract_conditions(video, ["depth"], depth_model=str(path))["depth"]
    assert torch.allclose(via_path, depth)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_depth_path_is_read_once_until_the_file_changes(tmp_path, video, monkeypatch):
    path = tmp_path / "depth.pt"
    torch.jit.script(TinyDepth()).save(str(path))
    reads = []
    jit_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: reads.append(a) or jit_load(*a, **k))
    first = extract_conditions(video, ["depth"], depth_model=str(path))["depth"]
    assert torch.equal(extract_conditions(video, ["depth"], depth_model=path)["depth"], first)
    assert len(reads) == 1  # a training loop passing the path every step reads it once
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a rewritten file
    extract_conditions(video, ["depth"], depth_model=str(path))
    assert len(reads) == 2


def test_state_dict_model_and_input_size(tmp_path, video):
    path = tmp_path / "depth.safetensors"
    save_file(TinyDepth().state_dict(), str(path))
    module = TinyDepth()
    with torch.no_grad():
        module.proj.weight.zero_()  # must be overwritten by the file
    est = load_depth_model(path, module=module, input_size=(8, 12))
    depth = extract_conditions(video, ["depth"], depth_model=est)["depth"]
    assert depth.shape == (2, 1, 4, 16, 24)
    assert depth[:, :, :, 5, 6].allclose(torch.tensor(4.0), atol=1e-4)
    pth = tmp_path / "wrapped.pth"
    torch.save({"state_dict": TinyDepth().state_dict()}, pth)
    assert torch.allclose(load_depth_model(pth, module=TinyDepth(), input_size=(8, 12))(video), depth, atol=1e-4)


def test_exported_program_model(tmp_path, video):
    path = tmp_path / "depth.pt2"
    torch.export.save(torch.export.export(TinyDepth(), (torch.zeros(2, 3, 16, 24),)), str(path))
    depth = load_depth_model(path)(video[:1, :, :2])  # 2 frames: the exported batch size
    assert depth.shape == (1, 1, 2, 16, 24) and depth[:, :, :, 5, 6].allclose(torch.tensor(4.0))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_depth_files(tmp_path):
    with pytest.raises(TFT2VError, match="not found"):
        load_depth_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        load_depth_model(junk)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_depth_model(junk, module=TinyDepth())
    wrong = tmp_path / "wrong.safetensors"
    save_file({"other.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(CheckpointError, match="missing"):
        load_depth_model(wrong, module=TinyDepth())


def test_network_with_wrong_output_shape(video):
    with pytest.raises(TFT2VError, match="depth network must return"):
        DepthEstimator(nn.Conv2d(3, 2, 1))(video)


def test_luminance_fallback_only_by_name(video):
    depth = extract_conditions(video, ["depth"], depth_model="luminance")["depth"]
    assert torch.equal(depth, luminance(video))
    assert depth.max() == pytest.approx(1.0) and depth.min() == pytest.approx(0.0)
