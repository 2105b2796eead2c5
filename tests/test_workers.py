"""DataLoader workers: how they start (tft2v.data.workers) and how a source travels to them (packed items)."""

import pickle
import threading

import pytest

from locked_source import LOCK, LockedSource
from media_fixtures import index_frames, write_video
from tft2v.data.media_source import Item, TarMember
from tft2v.data.packed_items import PackedItems, pack_items
from tft2v.data.sources import ListSource, SourceStream, scan_folder


def test_packed_items_round_trip_every_kind_of_item():
    items = [Item("a", "/data/a.mp4"), Item("b/β", TarMember("/s/0.tar", 512, 2048), caption="zwei Würfel"),
             Item("c", "https://x/c.mp4", caption_path="/data/c.txt", meta={"line": 3, "fps": 8.0})]
    packed = pickle.loads(pickle.dumps(pack_items(items)))
    assert isinstance(packed, PackedItems) and len(packed) == 3
    assert list(packed) == items and packed[-1] == items[2] and packed[1:] == items[1:]
    with pytest.raises(IndexError):
        packed[3]
    in_memory = [Item("m", b"\x00\x01")]
    assert pack_items(in_memory) == in_memory  # bytes have no JSON row: kept as a list


def test_a_large_source_pickles_as_two_buffers():
    items = [Item(f"clip{i:06d}", f"/data/clip{i:06d}.mp4", caption=f"caption {i}") for i in range(20_000)]
    source = ListSource(items, kind="video", num_frames=2, fps=8)
    payload = pickle.dumps(source.items, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"clip019999" in payload and b"media_source" not in payload  # no Item objects
    assert pickle.loads(payload)[19_999] == items[19_999]


@pytest.mark.parametrize("worker_start", ["forkserver", "spawn"])
def test_workers_do_not_inherit_a_lock_held_by_another_thread(tmp_path, worker_start):
    """A thread of the training process holds a lock the decoder takes while the workers start: a forked
    worker would inherit it held and wait forever (the hang forked workers hit inside PyAV's scaler)."""
    for i in range(4):
        write_video(tmp_path / f"c{i}.mp4", index_frames(8), fps=8)
    source = LockedSource(scan_folder(tmp_path, "video"), kind="video", num_frames=2, fps=8, size=(16, 16))
    stream = SourceStream(source, num_workers=2, worker_start=worker_start)
    held, release = threading.Event(), threading.Event()

    def hold():
        with LOCK:
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    got = []
    reader = threading.Thread(target=lambda: got.extend(s["key"] for _, s in zip(range(4), stream)), daemon=True)
    reader.start()
    reader.join(90)
    release.set()
    assert not reader.is_alive(), "the workers waited on a lock held in the parent"
    assert sorted(got) == [f"c{i}" for i in range(4)]
