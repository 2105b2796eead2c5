"""Session-wide test setup: data indexes (tft2v.data.index) are cached in a temporary folder, never in ~/.cache."""

import os
import tempfile

os.environ.setdefault("TFT2V_CACHE_DIR", tempfile.mkdtemp(prefix="tft2v-test-cache-"))
