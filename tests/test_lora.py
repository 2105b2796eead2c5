"""LoRA adapters (issue #15): injection, frozen base, trainer (only adapters learn / are saved), adapter
files, pipeline mixing / fusing, wrong base, generate --lora, finetune. Tiny models only (widths 8–16)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests._tiny import tiny_unet  # noqa: E402
from tft2v.config import load_config  # noqa: E402
from tft2v.models import lora  # noqa: E402

SMALL = dict(channel_mult=(1,), attention_scales=(1.0,))


def _inputs(unet, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, frames, 8, 8, generator=g)
    text = torch.randn(1, 5, unet.config.context_dim, generator=g)
    image = torch.randn(1, unet.config.image_embed_dim, generator=g) if unet.config.image_embed_dim else None
    return x, torch.tensor([7]), text, image


def _run(unet, inputs):
    x, t, text, image = inputs
    with torch.no_grad():
        return unet(x, t, text, image_embeds=image)


def _randomize_adapter(unet, name="default", seed=3, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in unet.named_parameters():
            if f"lora_" in k and f".{name}." in k:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _from_base(tmp_path) -> dict:
    """Config overrides that start training from a tiny pixel-space model folder (its zero-init branches
    redrawn: from scratch the zero output conv would give every adapter a zero gradient)."""
    from pipeline_fixtures import toy_model_folder

    folder = tmp_path / "base"
    if not folder.exists():
        toy_model_folder(folder)
    return {"model.init": "pretrained", "model.init_path": str(folder), "model.unet": "{}",
            "encoder.args": "{text_dim: 32, image_dim: 32, max_length: 8}"}


def test_targets_select_spatial_and_temporal_modules():
    unet = tiny_unet(**SMALL)
    spatial = lora.target_modules(unet, ["spatial"])
    temporal = lora.target_modules(unet, ["temporal"])
    assert spatial and temporal and not set(spatial) & set(temporal)
    assert all("attn" in n for n in spatial)
    assert any("temporal_conv.conv4.3" in n for n in temporal)
    assert set(spatial) < set(lora.target_modules(unet, ["spatial_conv"]))
    text_kv = lora.target_modules(unet, ["text_kv"])  # the text path only: cross-attention keys and values
    assert text_kv and set(text_kv) < set(spatial)
    assert all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in text_kv) and len(text_kv) == 2 * len(
        [n for n in spatial if n.endswith("attn2.to_q")])
    attn2_kv = lora.target_modules(unet, ["attn2_kv"])  # + the temporal transformers' second attention k/v
    assert set(text_kv) < set(attn2_kv) and set(attn2_kv) - set(text_kv) < set(temporal)
    assert all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in attn2_kv)
    assert lora.target_modules(unet, [r"middle_block\.0\.in_layers\.2"]) == ["middle_block.0.in_layers.2"]
    with pytest.raises(lora.LoraError, match="select no module"):
        lora.target_modules(unet, ["nothing_here"])
    with pytest.raises(lora.LoraError, match="neither a group"):  # configs and the CLI alike
        lora.target_modules(unet, ["("])


def test_apply_lora_freezes_base_and_starts_as_identity():
    from tft2v.config import LoraConfig

    unet = tiny_unet(**SMALL).requires_grad_(False)  # on CPU requires_grad changes kernels (last bits)
    inputs = _inputs(unet)
    before = _run(unet, inputs)
    modules = lora.apply_lora(LoraConfig(rank=4, targets=("spatial", "temporal")), unet)
    assert modules
    trainable = [k for k, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert torch.equal(_run(unet, inputs), before)  # lora_B starts at zero
    assert lora.apply_lora(LoraConfig(rank=0), tiny_unet(**SMALL)) is None


def test_lora_gradients_survive_gradient_checkpointing():
    """Frozen base, inputs without grad: the case where re-entrant checkpointing drops every gradient."""
    from tft2v.config import LoraConfig

    grads = []
    for ckpt in (False, True):
        unet = tiny_unet(**SMALL)
        lora.apply_lora(LoraConfig(rank=2, targets=("spatial", "temporal")), unet)
        _randomize_adapter(unet)  # lora_B != 0, so lora_A gets a gradient too
        if ckpt:
            unet.enable_gradient_checkpointing()
        x, t, text, image = _inputs(unet)
        unet.train()(x, t, text, image_embeds=image).square().mean().backward()
        grads.append({k: p.grad for k, p in unet.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    assert any(g.abs().sum() > 0 for k, g in grads[1].items() if "lora_A" in k)


def test_trainer_with_lora_trains_and_saves_only_adapters(tmp_path):
    from train_fixtures import tiny_config

    from tft2v.train.trainer import Trainer

    cfg = tiny_config(tmp_path / "run", **{**_from_base(tmp_path), "train.max_steps": 2, "optim.ema_decay": 0.9,
                                           "model.lora": "{rank: 4, targets: [spatial, temporal]}"})
    trainer = Trainer(cfg)
    base = {k: v.clone() for k, v in trainer.unet.state_dict().items() if "lora_" not in k}
    opt_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = {id(p): k for k, p in trainer.unet.named_parameters()}
    assert opt_params and all("lora_" in names[i] for i in opt_params)
    assert all("lora_" in names[id(p)] for p in trainer.params)  # what the EMA tracks
    summary = trainer.run()
    after = trainer.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # base untouched
    lora_b = [v for k, v in trainer.unet.named_parameters() if "lora_B" in k]
    assert not any("lora_" in k for k in after)  # state_dict(): the plain base (adapters saved apart)
    assert any(v.abs().sum() > 0 for v in lora_b)  # adapters learned
    ckpt = Path(summary["checkpoint"])
    for folder in ("lora", "lora_ema"):
        meta, weights = lora.read_adapter(ckpt / folder)
        assert weights and all(k.startswith("unet.") and ".lora_" in k for k in weights)
        assert meta["rank"] == 4 and meta["base"]["fingerprint"]


# -- adapter files, pipeline ------------------------------------------------------------------------

def _pipe():
    from pipeline_fixtures import toy_pipeline

    return toy_pipeline()


def _make_adapter(directory, targets=("spatial", "temporal"), seed=3, rank=2, std=0.3):
    """An adapter folder for the tiny pipeline's UNet with random (non-zero) adapter weights."""
    unet = _pipe().unet
    lora.add_adapter(unet, rank, targets=targets)
    _randomize_adapter(unet, seed=seed, std=std)
    return lora.save_adapter(unet, directory), unet


def _video(pipe, seed=0):
    from pipeline_fixtures import seeded

    with torch.no_grad():
        return pipe("a red ball", generator=seeded(seed), output_type="pt")


def test_adapter_files_round_trip_and_diffusers_layout(tmp_path):
    folder, trained = _make_adapter(tmp_path / "a")
    meta = json.loads((folder / lora.META_NAME).read_text())
    assert meta["rank"] == 2 and meta["modules"] and len(meta["base"]["fingerprint"]) == 32
    _, weights = lora.read_adapter(folder)
    assert all(k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
               for k in weights)
    pipe = _pipe()
    pipe.load_lora_weights(folder, adapter_name="a")
    inputs = _inputs(pipe.unet)
    trained.requires_grad_(False), pipe.unet.requires_grad_(False)
    assert torch.equal(_run(pipe.unet, inputs), _run(trained, inputs))
    lora.save_adapter(pipe.unet, tmp_path / "again", adapter_name="a")
    _, again = lora.read_adapter(tmp_path / "again")
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)


def test_scale_zero_is_bit_exact_and_adapters_mix(tmp_path):
    a, _ = _make_adapter(tmp_path / "a", targets=("temporal",), seed=3)
    b, _ = _make_adapter(tmp_path / "b", targets=("spatial",), seed=4)
    pipe = _pipe()
    base = _video(pipe)
    pipe.load_lora_weights(a, adapter_name="motion", scale=0.0)
    assert torch.equal(_video(pipe), base)  # scale 0: the base model bit for bit
    pipe.set_adapters(["motion"], [1.0])
    motion = _video(pipe)
    assert not torch.allclose(motion, base, atol=1e-4)
    pipe.load_lora_weights(b, adapter_name="content")
    assert pipe.get_active_adapters() == {"motion": 1.0, "content": 1.0}
    both = _video(pipe)
    assert not torch.allclose(both, motion, atol=1e-4)
    pipe.set_adapters(["motion", "content"], [1.0, 0.0])
    assert torch.equal(_video(pipe), motion)
    pipe.set_adapters(["motion", "content"], [0.0, 0.0])
    assert torch.equal(_video(pipe), base)
    pipe.set_adapters([], [])
    assert torch.equal(_video(pipe), base)
    with pytest.raises(lora.LoraError, match="unknown LoRA adapter"):
        pipe.set_adapters(["nope"])


def test_fuse_and_unfuse(tmp_path):
    a, _ = _make_adapter(tmp_path / "a", std=0.1)
    pipe = _pipe()
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(a, adapter_name="a", scale=0.7)
    inputs = _inputs(pipe.unet)
    live, live_video = _run(pipe.unet, inputs), _video(pipe)
    pipe.fuse_lora()
    assert not any(p.requires_grad and "lora_" in k for k, p in pipe.unet.named_parameters())
    assert torch.allclose(_run(pipe.unet, inputs), live, atol=1e-5)  # float32 rounding only
    assert torch.allclose(_video(pipe), live_video, atol=1e-4)  # 3 sampling steps amplify it a little
    pipe.unfuse_lora()
    assert torch.allclose(_run(pipe.unet, inputs), live, atol=1e-5)
    restored = lora._base_state(pipe.unet)
    assert all(torch.allclose(restored[k], v, atol=1e-6) for k, v in base_weights.items())


def test_adapter_for_another_base_is_refused(tmp_path):
    from pipeline_fixtures import toy_pipeline

    a, _ = _make_adapter(tmp_path / "a")
    other = toy_pipeline(model_channels=8, norm_num_groups=4)  # another architecture
    with pytest.raises(lora.LoraError, match="made for another base model"):
        other.load_lora_weights(a)
    same_shapes = _pipe()
    with torch.no_grad():
        for p in same_shapes.unet.parameters():
            p.add_(0.5)  # same architecture, other weights
    with pytest.raises(lora.LoraError, match="made for another base model"):
        same_shapes.load_lora_weights(a)
    half = _pipe().to(dtype=torch.bfloat16)  # the same model in another precision is the same base
    half.load_lora_weights(a)


def test_generate_cli_with_lora(tmp_path, capsys):
    import numpy as np
    from pipeline_fixtures import toy_model_folder

    from tft2v.cli import main
    from tft2v.commands.generate import parse_lora_spec
    from PIL import Image

    assert parse_lora_spec("a/b:0.5") == (Path("a/b"), 0.5)
    assert parse_lora_spec("a/b") == (Path("a/b"), 1.0)
    assert parse_lora_spec("C:/x") == (Path("C:/x"), 1.0)
    model = toy_model_folder(tmp_path / "model")
    adapter, _ = _make_adapter(tmp_path / "a")

    def gen(name, *extra):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--model", str(model), "a ball", "--device", "cpu", "--out",
                  str(tmp_path / name), *extra])
        assert e.value.code == 0
        return np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / name).glob("*.png"))])

    base = gen("base")  # PNG frames: lossless
    assert np.array_equal(gen("zero", "--lora", f"{adapter}:0"), base)
    assert not np.array_equal(gen("one", "--lora", str(adapter), "--lora", f"{adapter}:0.5"), base)
    other, _ = _make_adapter(tmp_path / "x")
    meta = json.loads((other / lora.META_NAME).read_text())
    meta["base"]["fingerprint"] = "0" * 32
    (other / lora.META_NAME).write_text(json.dumps(meta))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(model), "a ball", "--device", "cpu", "--lora", str(other),
              "--out", str(tmp_path / "bad.mp4")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "made for another base model" in err and len(err.strip().splitlines()) == 1


def test_finetune_cli_end_to_end(tmp_path, capsys):
    """Tiny base model folder + 3 toy clips written by `tft2v data toy` → adapter + before/after videos,
    and the adapter changes generation."""
    from pipeline_fixtures import toy_model_folder

    from tft2v.cli import main

    model = toy_model_folder(tmp_path / "model")
    with pytest.raises(SystemExit) as e:
        main(["data", "toy", str(tmp_path / "toy"), "--num-images", "2", "--num-videos", "3",
              "--num-captioned", "0", "--size", "32", "--frames", "6"])
    assert e.value.code == 0
    clips = tmp_path / "toy" / "videos"
    assert clips.is_dir(), sorted(p.name for p in (tmp_path / "toy").iterdir())
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", str(model), "--clips", str(clips), "--out", str(tmp_path / "out"),
              "--prompt", "a red circle", "--steps", "3", "--rank", "4", "--lr", "1e-2", "--sample-steps", "2",
              "--high-noise-share", "0.5", "--high-noise-start", "900", "--no-progress"])
    assert e.value.code == 0
    out = tmp_path / "out"
    recipe = load_config(out / "run" / "config.yaml").recipe
    assert (recipe.video_high_noise_share, recipe.video_high_noise_start) == (0.5, 900)
    meta, weights = lora.read_adapter(out / "lora")
    assert meta["rank"] == 4 and weights
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert (out / "samples" / "before_00.mp4").stat().st_size > 0
    assert (out / "samples" / "after_00.mp4").stat().st_size > 0
    assert "wrote adapter" in capsys.readouterr().out
    # with image-text pairs: spatial adapters too, trained in the same steps
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", str(model), "--clips", str(clips), "--images", str(tmp_path / "toy" / "images"),
              "--out", str(tmp_path / "out2"), "--steps", "2", "--rank", "2", "--lr", "1e-2", "--no-progress"])
    assert e.value.code == 0
    meta, weights = lora.read_adapter(tmp_path / "out2" / "lora")
    from tft2v.pipeline import TFT2VPipeline

    spatial = lora.target_modules(TFT2VPipeline.from_pretrained(model).unet, ["spatial"])
    assert set(spatial) < set(meta["modules"])
    # a module-name regular expression as the target: only what it names is adapted
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", str(model), "--clips", str(clips), "--out", str(tmp_path / "out3"),
              "--steps", "1", "--rank", "2", "--target", r".*temporal_conv\.conv1.*", "--no-progress"])
    assert e.value.code == 0
    modules = lora.read_adapter(tmp_path / "out3" / "lora")[0]["modules"]
    assert modules and all(".temporal_conv.conv1." in m for m in modules)
    for bad, says in ((str(tmp_path / "nope"), "not a folder"), ("(", "neither a group"),
                      ("nothing_here", "select no module")):
        args = ["--clips", bad] if says == "not a folder" else ["--clips", str(clips), "--target", bad]
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["finetune", "--model", str(model), *args, "--out", str(tmp_path / "out4"), "--steps", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_lora_checkpoint_holds_the_adapter_not_the_base_and_resume_is_exact(tmp_path):
    from train_fixtures import tiny_config

    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.trainer import Trainer, train

    extra = {**_from_base(tmp_path), "train.max_steps": 3, "train.checkpoint_every": 1, "optim.ema_decay": 0.9,
             "model.lora": "{rank: 2, targets: [temporal]}"}
    full = train(tiny_config(tmp_path / "full", **extra))
    Trainer(tiny_config(tmp_path / "part", **extra)).run(stop_at=2)
    part = train(tiny_config(tmp_path / "part", **extra), resume="auto")
    for folder in ("lora", "lora_ema"):
        _, a = lora.read_adapter(Path(full["checkpoint"]) / folder)
        _, b = lora.read_adapter(Path(part["checkpoint"]) / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # lora_ema/ holds the EMA's shadow weights (the trainable parameters' order), not the live ones
    live = lora.read_adapter(Path(full["checkpoint"]) / "lora")[1]
    ema = lora.read_adapter(Path(full["checkpoint"]) / "lora_ema")[1]
    shadows = torch.load(Path(full["checkpoint"]) / "ema.pt", weights_only=False)["shadow_params"]
    trainable = [k for k, p in Trainer(tiny_config(tmp_path / "names", **extra)).unet.named_parameters()
                 if p.requires_grad]
    assert len(trainable) == len(shadows) == len(ema)
    for name, shadow in zip(trainable, shadows):
        assert torch.equal(ema["unet." + name.replace(".default.", ".")], shadow), name
    assert any(not torch.equal(live[k], ema[k]) for k in live)
    # no copy of the frozen base: its path and fingerprint
    ckpt = Path(full["checkpoint"])
    assert not (ckpt / "unet").exists() and not (ckpt / "unet_ema").exists()
    base = json.loads((ckpt / "base.json").read_text())
    assert (base["init"], base["init_path"]) == ("pretrained", str((tmp_path / "base").resolve()))
    assert base["fingerprint"] == lora.base_fingerprint(TFT2VPipeline.from_pretrained(tmp_path / "base").unet)


def _checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_lora_checkpoint_is_under_5_percent_of_a_full_one(tmp_path):
    """The tiny base (430 k weights, 1.7 MB) with a rank-2 temporal adapter (11 k weights, 2.6 %); EMA on in
    both runs. A checkpoint that still held the base would be larger than the full run's optimizer alone."""
    from train_fixtures import tiny_config

    from tft2v.train.trainer import train

    extra = {**_from_base(tmp_path), "train.max_steps": 1, "optim.ema_decay": 0.9}
    full = _checkpoint_bytes(Path(train(tiny_config(tmp_path / "full", **extra))["checkpoint"]))
    with_lora = {**extra, "model.lora": "{rank: 2, targets: [temporal]}"}
    adapter = _checkpoint_bytes(Path(train(tiny_config(tmp_path / "lora", **with_lora))["checkpoint"]))
    assert adapter < 0.05 * full, (adapter, full)


def test_resume_against_another_base_is_refused(tmp_path):
    from pipeline_fixtures import toy_model_folder
    from train_fixtures import tiny_config

    from tft2v.errors import CheckpointError
    from tft2v.train.trainer import Trainer, train

    extra = {**_from_base(tmp_path), "train.max_steps": 1, "model.lora": "{rank: 2, targets: [temporal]}"}
    train(tiny_config(tmp_path / "run", **extra))
    toy_model_folder(tmp_path / "base", seed=1)  # the same path, other weights
    with pytest.raises(CheckpointError, match="was trained on the base pretrained .* but this run's base is") as e:
        Trainer(tiny_config(tmp_path / "run", **{**extra, "train.max_steps": 2}), resume="auto")
    assert len(str(e.value).splitlines()) == 1 and str(e.value).count("fingerprint") == 2
    with pytest.raises(CheckpointError, match="holds a LoRA adapter, not the model"):  # resumed without model.lora
        Trainer(tiny_config(tmp_path / "run", **{**extra, "model.lora": "{rank: 0}"}), resume="auto")


def test_lora_run_exports_its_adapter_on_the_base(tmp_path, capsys):
    """model/ = lora/ (the EMA adapter) + a reference to the base folder: it loads as the base with that adapter
    and generates as model_fused/, the same model as plain weights; a missing base is a one-line error."""
    import numpy as np
    from PIL import Image
    from train_fixtures import tiny_config

    from tft2v.cli import main
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.trainer import train

    run = tmp_path / "run"
    summary = train(tiny_config(run, **{**_from_base(tmp_path), "train.max_steps": 2, "optim.ema_decay": 0.5,
                                        "model.lora": "{rank: 2, targets: [spatial, temporal]}",
                                        "train.export": True, "train.export_fused": True}))
    model = Path(summary["model"])
    assert (model / "lora" / lora.WEIGHTS_NAME).is_file() and not (model / "unet").exists()
    index = json.loads((model / "model_index.json").read_text())
    assert index["lora"] == {"adapter": "lora", "base_unet": str((tmp_path / "base" / "unet").resolve())}
    exported = TFT2VPipeline.from_pretrained(model)
    assert exported.get_active_adapters() == {"model": 1.0}
    reference = TFT2VPipeline.from_pretrained(tmp_path / "base")
    plain = _run(reference.unet.requires_grad_(False), _inputs(reference.unet))
    reference.load_lora_weights(Path(summary["checkpoint"]) / "lora_ema")
    inputs = _inputs(reference.unet)
    adapted = _run(reference.unet, inputs)
    assert torch.equal(_run(exported.unet.requires_grad_(False), inputs), adapted)
    assert not torch.equal(adapted, plain)  # the adapter trained and is applied
    fused = TFT2VPipeline.from_pretrained(run / "model_fused").unet
    assert not any("lora_" in k or "base_layer" in k for k in fused.state_dict())
    assert torch.allclose(_run(fused.requires_grad_(False), inputs), adapted, atol=1e-5)

    def gen(name, *args):
        with pytest.raises(SystemExit) as e:
            main(["generate", *args, "a ball", "--device", "cpu", "--steps", "2", "--out", str(tmp_path / name)])
        assert e.value.code == 0
        return np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / name).glob("*.png"))])

    exported_video = gen("exported", "--model", str(model))
    fused_video = gen("fused", "--model", str(run / "model_fused"))
    assert np.abs(exported_video.astype(int) - fused_video).max() <= 2  # float32 rounding of the merge only
    (tmp_path / "base").rename(tmp_path / "moved")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(model), "a ball", "--device", "cpu", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "which is not there" in err and len(err.strip().splitlines()) == 1, err


def test_lora_on_a_base_without_a_folder_resumes_and_exports_it_once(tmp_path):
    """model.init scratch: the base is redrawn from the seed on resume (the fingerprint checks it), and the
    export writes it as model/unet/ beside the adapter, the one copy of the base the run writes."""
    from train_fixtures import tiny_config

    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.trainer import Trainer, train

    extra = {"train.max_steps": 2, "train.checkpoint_every": 1, "model.lora": "{rank: 2, targets: [temporal]}",
             "train.export": True}
    full = train(tiny_config(tmp_path / "full", **extra))
    Trainer(tiny_config(tmp_path / "part", **extra)).run(stop_at=1)
    part = train(tiny_config(tmp_path / "part", **extra), resume="auto")
    a, b = (lora.read_adapter(Path(s["checkpoint"]) / "lora")[1] for s in (full, part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any((c / "unet").exists() for c in (tmp_path / "full" / "checkpoints").iterdir())
    model = Path(full["model"])
    assert (model / "unet").is_dir()
    assert json.loads((model / "model_index.json").read_text())["lora"]["base_unet"] is None
    assert TFT2VPipeline.from_pretrained(model).get_active_adapters() == {"model": 1.0}


def test_export_fused_needs_lora(tmp_path):
    from train_fixtures import tiny_config

    from tft2v.errors import ConfigError

    with pytest.raises(ConfigError, match="needs model.lora.rank"):
        tiny_config(tmp_path, **{"train.export": True, "train.export_fused": True})


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from train_fixtures import tiny_config
from tft2v.train import Trainer

trainer = Trainer(tiny_config({out!r}, **{extra!r}))
trainer.run()
rank = trainer.accelerator.process_index
adapters = {{k: v.detach().clone() for k, v in trainer.unet.named_parameters() if "lora_" in k}}
torch.save({{"adapters": adapters, "base": trainer.unet.state_dict(), "world": trainer.accelerator.num_processes}},
           f"{out}/rank{{rank}}.pt")
"""


@pytest.mark.slow
def test_lora_under_two_ddp_cpu_ranks(tmp_path):
    import os
    import subprocess

    import safetensors.torch

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    out.mkdir()
    extra = {**_from_base(tmp_path), "train.max_steps": 2, "model.lora": "{rank: 2, targets: [spatial, temporal]}"}
    script = tmp_path / "ddp_lora.py"
    script.write_text(DDP_SCRIPT.format(tests=str(repo / "tests"), out=str(out), extra=extra))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, cwd=repo, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert ranks[0]["world"] == 2
    a0, a1 = ranks[0]["adapters"], ranks[1]["adapters"]
    assert a0 and all(torch.equal(a0[k], a1[k]) for k in a0)  # gradients averaged over ranks
    assert any(v.abs().sum() > 0 for k, v in a0.items() if "lora_B" in k)
    base = safetensors.torch.load_file(tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ranks[0]["base"][k], base[k]) for k in base)  # frozen base
    assert (out / "checkpoints" / "step-00000002" / "lora" / lora.WEIGHTS_NAME).is_file()


@pytest.mark.slow
def test_lora_run_killed_mid_run_resumes_to_the_same_adapter(tmp_path):
    """kill -9 a LoRA training process mid-run (CLI, files on disk); every checkpoint it left has its adapter,
    and ``--resume auto`` ends with the uninterrupted run's losses and adapter files, bit for bit."""
    import os
    import subprocess

    from test_trainer import losses
    from train_fixtures import kill_after_checkpoint, tiny_overrides

    from tft2v.train.checkpoint import list_checkpoints

    repo = Path(__file__).resolve().parents[1]
    steps = 8
    extra = {**_from_base(tmp_path), "train.max_steps": steps, "train.checkpoint_every": 1, "optim.ema_decay": 0.9,
             "model.lora": "{rank: 2, targets: [spatial, temporal]}"}

    def cmd(run: Path) -> list[str]:
        sets = sum((["--set", s] for s in tiny_overrides(run, **extra)), [])
        return [sys.executable, "-m", "tft2v.cli", "train", str(repo / "configs/toy.yaml"), *sets]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd(tmp_path / "full"), cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    run = tmp_path / "killed"
    left = kill_after_checkpoint(cmd(run), run, "step-00000003", repo, env)
    assert left and left[-1].name < f"step-{steps:08d}", "the run finished before it was killed"
    assert all((c / "lora" / lora.WEIGHTS_NAME).is_file() and (c / "lora_ema" / lora.WEIGHTS_NAME).is_file()
               for c in left)  # written before the checkpoint was published
    resumed = subprocess.run([*cmd(run), "--resume", "auto"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(run) == losses(tmp_path / "full") and sorted(losses(run)) == list(range(1, steps + 1))
    a, b = list_checkpoints(run / "checkpoints")[-1], list_checkpoints(tmp_path / "full/checkpoints")[-1]
    for folder in ("lora", "lora_ema"):
        wa, wb = lora.read_adapter(a / folder)[1], lora.read_adapter(b / folder)[1]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wb), folder


def test_finetune_clips_are_the_video_types_training_reads(tmp_path, capsys):
    """``--clips`` counts the types training reads (tft2v.data.media_types): .m4v and .ts clips train; a
    GIF is an image there, so a folder of GIFs holds no clips."""
    from cli_run import run
    from pipeline_fixtures import toy_model_folder

    from tft2v.data.toy import ToyWorld, generate
    from tft2v.data.toy_files import write_video

    model = toy_model_folder(tmp_path / "model")
    frames = generate("videos", 2, seed=0, world=ToyWorld(size=32, frames=6)).frames  # uint8 (2, 6, 32, 32, 3)
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "a.m4v", frames[0])
    write_video(clips / "b.ts", frames[1])
    code, out, err = run(["finetune", "--model", str(model), "--clips", str(clips), "--out", str(tmp_path / "out"),
                          "--steps", "1", "--rank", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "finetune: 2 clips" in out
    (state,) = (tmp_path / "out" / "run" / "checkpoints").glob("step-*/rank0.json")
    loader = json.loads(state.read_text())["loader"]
    assert loader["consumed"]["videos"] == 2 and loader["epochs"]["videos"] == 0  # both decoded, none skipped
    gifs = tmp_path / "gifs"
    gifs.mkdir()
    (gifs / "a.gif").write_bytes(b"GIF89a")
    code, out, err = run(["finetune", "--model", str(model), "--clips", str(gifs), "--out", str(tmp_path / "out2"),
                          "--steps", "1"], capsys)
    assert code == 2 and "no video files (.mp4" in err and ".m4v" in err and ".gif" not in err.split("(")[1], err
