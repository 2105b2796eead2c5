"""The shapes world's definition (SPEC §3): colours, shapes, sizes, motions and caption grammar.

Generators (``tft2v.data.toy``) and analytic evaluators (``tft2v.metrics.toy``) both import this
module so the two never disagree.
"""

from __future__ import annotations

# Saturated colours on a dark background; analytic evaluators classify by nearest RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 245),
    "yellow": (235, 220, 40),
    "magenta": (225, 50, 220),
    "cyan": (40, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Unit displacement (dx, dy) in image coordinates (y grows downwards).
MOTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

FRAME_SIZE = 32  # pixels, square frames
NUM_FRAMES = 16
SIZE_RANGE = (6, 12)  # object size in pixels, inclusive
SPEED_RANGE = (1, 2)  # pixels per frame, inclusive
BACKGROUND_MAX = 24  # dark background: every background channel value stays <= this

# Colour x shape combinations that never appear in any video (only in image-text pairs).
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("cyan", "square"),
)


def caption(colour: str, shape: str, motion: str | None = None) -> str:
    """Caption grammar: ``"a red circle"`` or ``"a red circle moving left"``."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    text = f"a {colour} {shape}"
    if motion is not None:
        if motion not in MOTIONS:
            raise ValueError(f"unknown motion {motion!r}; expected one of {list(MOTIONS)}")
        text += f" moving {motion}"
    return text


def parse_caption(text: str, colours=COLOURS, motions=MOTIONS) -> tuple[str | None, str | None, str | None]:
    """Inverse of :func:`caption`: (colour, shape, motion), ``None`` for parts the text lacks.
    ``colours`` / ``motions``: the words to recognise (default the spec's; any container of names)."""
    words = text.lower().replace(",", " ").split()
    colour = next((w for w in words if w in colours), None)
    shape = next((w for w in words if w in SHAPES), None)
    motion = None
    if "moving" in words:
        i = words.index("moving")
        if i + 1 < len(words) and words[i + 1] in motions:
            motion = words[i + 1]
    return colour, shape, motion
