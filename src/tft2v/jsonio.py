"""Reading the small JSON files of model folders and caches with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from tft2v.errors import TFT2VError


def read_json(path: str | Path, missing: str):
    """The parsed JSON at ``path``; ``TFT2VError(missing)`` if there is no such file, and a one-line
    "cannot parse" error naming the file if it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TFT2VError(f"cannot parse {path}: {str(err).splitlines()[0]}") from None
