"""I3D and FID-Inception feature networks: checkpoint layout, loading, FVD/FID known answers."""

import pytest
import torch
from safetensors.torch import save_file

from metrics_reference import calibrate_bn
from tft2v.errors import CheckpointError, TFT2VError
from tft2v.metrics.evaluate import evaluate_videos
from tft2v.metrics.i3d import InceptionI3D, load_i3d
from tft2v.metrics.inception import FIDInceptionV3, load_inception
from tft2v.metrics.preprocess import tf_resize_bilinear


def _videos(n, seed, frames=8, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, frames, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny_i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    net = InceptionI3D(num_classes=400, width=1 / 16)
    calibrate_bn(net, _videos(4, 10, frames=8, size=32))
    path = tmp_path_factory.mktemp("i3d") / "i3d.pt"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def tiny_inception_file(tmp_path_factory):
    torch.manual_seed(0)
    net = FIDInceptionV3(width=1 / 8, num_classes=1008)
    calibrate_bn(net, _videos(1, 11, frames=8, size=75)[0].transpose(0, 1))  # 8 frames as images
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_full_size_layouts_match_the_public_checkpoints():
    i3d = InceptionI3D().state_dict()
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_var", "Mixed_3b.b0.conv3d.weight",
                "Mixed_5c.b2b.bn.bias", "logits.conv3d.weight", "logits.conv3d.bias"):
        assert key in i3d, key
    assert i3d["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert i3d["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert i3d["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    inc = FIDInceptionV3().state_dict()
    assert inc["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert inc["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert inc["fc.weight"].shape == (1008, 2048)
    # torchvision's inception_v3 has 27,161,264 parameters; minus its auxiliary head (3,326,696) and
    # plus 8 more classes (8·2048 + 8) gives the FID network's count.
    n_params = sum(v.numel() for k, v in inc.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 27_161_264 - 3_326_696 + 16_392


def test_i3d_loads_and_matches(tiny_i3d_file):
    path, net = tiny_i3d_file
    fe = load_i3d(path, input_size=64)
    assert fe.net.width == pytest.approx(1 / 16)
    x = _videos(2, 0, frames=16, size=40)
    feats = fe(x)
    assert feats.shape == (2, 400)
    # FVD preprocessing: TF1 legacy bilinear resize, values stay in [-1, 1].
    resized = tf_resize_bilinear(x.transpose(1, 2).reshape(32, 3, 40, 40), (64, 64))
    with torch.no_grad():
        expected = net.eval()(resized.reshape(2, 16, 3, 64, 64).transpose(1, 2))[1]
    torch.testing.assert_close(feats, expected)
    assert load_i3d(path, feature="pool", input_size=64)(x).shape == (2, net.feature_dim)


def test_i3d_checkpoint_variants(tiny_i3d_file, tmp_path):
    path, net = tiny_i3d_file
    state = net.state_dict()
    # DataParallel prefix, {'state_dict': ...} wrapper, no num_batches_tracked, safetensors.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items() if "num_batches" not in k}}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    x = _videos(1, 1, frames=8, size=32)
    ref = load_i3d(path, input_size=32)(x)
    torch.testing.assert_close(load_i3d(tmp_path / "wrapped.pt", input_size=32)(x), ref)
    torch.testing.assert_close(load_i3d(tmp_path / "w.safetensors", input_size=32)(x), ref)
    broken = {k: v for k, v in state.items() if k != "Mixed_4c.b1b.bn.weight"}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="Mixed_4c.b1b.bn.weight"):
        load_i3d(tmp_path / "broken.pt")
    with pytest.raises(TFT2VError, match="not found"):
        load_i3d(tmp_path / "missing.pt")


class _LogitsOnly(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[1]


class _StyleGANVLikeDetector(torch.nn.Module):
    """The calling convention of StyleGAN-V's TorchScript I3D: keyword flags, logits out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        return self.net(x)


def test_i3d_torchscript(tiny_i3d_file, tmp_path):
    _, net = tiny_i3d_file
    x = _videos(2, 2, frames=8, size=32)
    with torch.no_grad():
        traced = torch.jit.trace(_LogitsOnly(net).eval(), x, check_trace=False)
        expected = net(x)[1]
    torch.jit.script(_StyleGANVLikeDetector(traced)).save(str(tmp_path / "i3d_torchscript.pt"))
    fe = load_i3d(tmp_path / "i3d_torchscript.pt", input_size=32)
    assert fe.torchscript
    torch.testing.assert_close(fe(x), expected)


def test_fvd_zero_for_identical_and_positive_otherwise(tiny_i3d_file):
    fe = load_i3d(tiny_i3d_file[0], input_size=32)
    real = _videos(6, 3, frames=8, size=32)
    assert fe(real).std(dim=0).min() > 1e-3  # features vary across videos: the test can fail
    same = evaluate_videos(real, reference=list(real), i3d=fe, batch_size=4)
    assert same["fvd"] == pytest.approx(0.0, abs=1e-6) and same["num_reference"] == 6
    dark = (real * 0.3 - 0.6).clamp(-1, 1)
    assert evaluate_videos(dark, reference=real, i3d=fe)["fvd"] > 1.0
    assert "fid" in evaluate_videos(real, i3d=fe)["skipped"]


def test_inception_loads_fid_zero_and_positive(tiny_inception_file, tmp_path):
    path, net = tiny_inception_file
    # torchvision-style files carry an auxiliary head that FID ignores.
    state = dict(net.state_dict(), **{"AuxLogits.fc.weight": torch.zeros(2, 2)})
    torch.save(state, tmp_path / "with_aux.pth")
    fe = load_inception(tmp_path / "with_aux.pth", input_size=75)
    x = _videos(3, 4, frames=4, size=32)
    feats = fe(x)
    assert feats.shape == (12, net.feature_dim) == (12, 256)
    # FID preprocessing: TF1 legacy bilinear resize of 0..255 values, then (u - 128) / 128.
    u = tf_resize_bilinear((x.transpose(1, 2).reshape(12, 3, 32, 32) + 1) * 127.5, (75, 75))
    frames = (u - 128) / 128
    with torch.no_grad():
        torch.testing.assert_close(feats, net.eval()(frames))
    res = evaluate_videos(x, reference=x, inception=fe)
    assert res["fid"] == pytest.approx(0.0, abs=1e-6) and res["fid_num_frames"] == 12
    assert feats.std(dim=0).mean() > 1e-2 * feats.abs().mean()  # features vary: the test can fail
    assert evaluate_videos(x.flip(-1) * 0.5, reference=x, inception=fe)["fid"] > 1.0
    with pytest.raises(CheckpointError, match="InceptionV3"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
        load_inception(tmp_path / "bad.pth")


@pytest.mark.slow  # the tiny I3D still sees 224×224 frames here (~20 s on a busy 2-core CPU)
def test_eval_cli_end_to_end(tiny_i3d_file, tmp_path, capsys):
    """`tft2v eval` on mp4 files: FVD from a tiny I3D + toy metrics from sidecar prompts → JSON + md."""
    import json

    from tft2v.cli import main
    from tft2v.data.toy import generate
    from tft2v.data.toy_files import write_video

    data = generate("captioned_videos", 4, seed=0)
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for i in range(4):
        write_video(gen / f"{i}.mp4", data.frames[i])
        write_video(ref / f"{i}.mp4", data.frames[i])
        (gen / f"{i}.txt").write_text(data.caption(i))
    out = tmp_path / "m" / "metrics.json"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--videos", str(gen), "--reference", str(ref), "--i3d", str(tiny_i3d_file[0]),
              "--toy", "--out", str(out), "--device", "cpu"])
    assert e.value.code == 0
    res = json.loads(out.read_text())
    assert res["fvd"] == pytest.approx(0.0, abs=1e-6) and res["num_reference"] == 4
    assert res["toy"]["direction_accuracy"] == 1.0 and res["toy"]["shape_accuracy"] == 1.0
    assert "| FVD (I3D) |" in out.with_suffix(".md").read_text()
    assert "no inception network given" in out.with_suffix(".md").read_text()


def test_eval_cli_errors(tmp_path, capsys):
    from tft2v.cli import main

    for argv, msg in (
        (["eval", "--videos", str(tmp_path), "--toy"], "no video files"),
        (["eval", "--videos", str(tmp_path)], "nothing to compute"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1
