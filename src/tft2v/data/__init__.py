"""Data layer: sources, video I/O, mixing, condition extraction and the shapes world."""
