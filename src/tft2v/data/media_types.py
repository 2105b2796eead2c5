"""The one list of file types tft2v reads as images and as videos.

Training's folder scans and tar shard members (:mod:`tft2v.data.sources`,
:mod:`tft2v.data.sources_webdataset`), ``tft2v data inspect``, ``tft2v finetune --clips`` and
``tft2v eval`` all take them from here, so a file one of them accepts is never refused by another.
Each list is in order of preference: a tar sample with two media members uses the first listed.
"""

from __future__ import annotations

# PIL; an animated GIF is an image here (its first frame), never a clip.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# PyAV (FFmpeg) demuxes all of these, from a path or from bytes.
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")
