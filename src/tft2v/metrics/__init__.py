"""Video generation metrics: FVD, FID, CLIPSIM, frame consistency and the shapes-world evaluators.

Videos are ``(B, C, F, H, W)`` floats in ``[-1, 1]`` (an image is F = 1); uint8 ``(F, H, W, C)``
exists only at the file I/O edge (``tft2v eval``). Every feature network loads from a local file.
"""

from tft2v.metrics.clip_metrics import CLIPScorer
from tft2v.metrics.evaluate import evaluate_videos
from tft2v.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats
from tft2v.metrics.i3d import I3DFeatures, InceptionI3D, load_i3d
from tft2v.metrics.inception import FIDInceptionV3, InceptionFeatures, load_inception
from tft2v.metrics.report import markdown, write_report
from tft2v.metrics.toy import analyse_clip, evaluate_toy

__all__ = [
    "CLIPScorer",
    "FIDInceptionV3",
    "FeatureStats",
    "I3DFeatures",
    "InceptionFeatures",
    "InceptionI3D",
    "analyse_clip",
    "evaluate_toy",
    "evaluate_videos",
    "frechet_distance",
    "frechet_distance_from_stats",
    "load_i3d",
    "load_inception",
    "markdown",
    "write_report",
]
