"""A ListSource whose decoding takes a module-level lock (imported by DataLoader workers, so it lives here)."""

import threading

from tft2v.data.sources import ListSource

LOCK = threading.Lock()


class LockedSource(ListSource):
    def decode_item(self, *args, **kwargs):
        with LOCK:
            return super().decode_item(*args, **kwargs)
