"""Models: the TF-T2V space-time UNet and its building blocks. Layout (B, C, F, H, W)."""

from tft2v.models.conditions import CONDITION_CHANNELS
from tft2v.models.unet import TFT2VUNet

__all__ = ["TFT2VUNet", "CONDITION_CHANNELS"]
