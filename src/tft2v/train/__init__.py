"""Training: the TF-T2V recipe (content + motion branches), the accelerate loop, checkpoints, logs.

Videos are ``(B, C, F, H, W)`` throughout; an image is F = 1.
"""

from tft2v.train.trainer import Trainer, train

__all__ = ["Trainer", "train"]
