"""Tiny model folders for the web UI tests: a 16x16 pixel-space TFT2VUNet (from :mod:`tests._tiny`), toy
encoder, identity autoencoder, written with TFT2VPipeline.save_pretrained (seconds to load and sample on a
CPU); and the source video / image files users would upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests._tiny import PIXEL, tiny_pipeline, tiny_unet

SIZE = 16
DEFAULTS = {"num_frames": 4, "height": SIZE, "width": SIZE, "fps": 8, "negative_prompt": "blurry, static",
            "guidance_scale": 7.5, "num_inference_steps": 2}


def write_tiny_model(directory: Path, conditions: tuple[str, ...] = ()) -> Path:
    """Write a tiny model folder; weights are random (not zero-initialised) so every input matters."""
    unet = tiny_unet(std=(0.1, 0.02), **{**PIXEL, "image_embed_dim": None, "conditions": conditions,
                                         "condition_channels": 4 if conditions else 0,
                                         # pixel space: the condition encoder's /8 must land on the 16x16 "latent"
                                         "condition_pixel_size": (8 * SIZE, 8 * SIZE)})
    return tiny_pipeline(unet, DEFAULTS).save_pretrained(directory)


def write_source_video(path: Path, num_frames: int = 8, size: int = 32) -> Path:
    """A short clip with a moving bright square (edges for the sketch extractor), as mp4."""
    from tft2v.video_export import export_video

    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    for f in range(num_frames):
        frames[f, 8:20, 2 + 2 * f: 14 + 2 * f] = 255
    return export_video(frames, path, fps=8)


def write_source_image(path: Path, left: int = 4, size: int = 24) -> Path:
    """A PNG with a bright square on a dark ground (edges for single_sketch, content for local_image)."""
    from PIL import Image

    pixels = np.full((size, size, 3), 30, np.uint8)
    pixels[6:18, left:left + 12] = (230, 60, 40)
    Image.fromarray(pixels).save(path)
    return path
