"""tft2v: an open, trainable implementation of TF-T2V (Wang et al., CVPR 2024).

Tensor layout convention across the package: videos are ``(B, C, F, H, W)``; an image is F = 1.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import tft2v` stays cheap (the CLI's --help must not import torch-heavy modules).
    if name == "export_video":
        from tft2v.video_export import export_video

        return export_video
    raise AttributeError(f"module 'tft2v' has no attribute {name!r}")
