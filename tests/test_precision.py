"""Numerics of the training step: bf16 autocast vs fp32, gradient accumulation vs one big batch,
torch.compile, and the independence of the per-sample random streams (tft2v.train.recipe.sample_generators).

All runs are the tiny trainer configs of ``train_fixtures`` (16×16, 4 frames, width 8) on CPU.

Measured here (2-core CPU, torch 2.13.0+cpu), which the tolerances below are set from:

* bf16 vs fp32, first step, same seed and batch: loss rel. difference 1.7e-3, branch parts ≤ 3.5e-3,
  grad norm 1e-3 (tolerance 2e-2; the zero-initialised output branches are redrawn first, else the
  prediction is exactly 0 and both losses are trivially identical);
* grad_accum 2 × B vs one batch of 2B: loss ≤ 2.4e-7 abs., weights ≤ 7e-7 abs. after 1 and 3 steps
  (tolerance 1e-5).

Sample weights (text_free_videos=false) are normalised over the whole step (all micro-batches and
ranks), and the condition encoders' dropout is a model setting (condition_encoder_dropout, 0 in the
tiny configs) — model dropout draws from the global RNG, so equality needs it off.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from _tiny import randomize_
from tft2v.train import Trainer
from tft2v.train.recipe import BRANCHES, Recipe, sample_generators
from train_fixtures import tiny_config

BF16_REL_TOL = 2e-2
ACCUM_TOL = 1e-5


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another
    mixed_precision; these tests build fp32 and bf16 trainers in one process, so reset between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    _reset_accelerate()
    yield
    _reset_accelerate()


def _trainer(out_dir, **extra) -> Trainer:
    """A tiny trainer whose zero-initialised output branches are redrawn (N(0, 0.2²)) so the prediction,
    and through it every weight, enters the loss from the first step."""
    trainer = Trainer(tiny_config(out_dir, **extra))
    randomize_(trainer.unet, torch.Generator().manual_seed(1), std=(0.2, 0.2), zero_init_only=True)
    return trainer


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unet.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    return max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)


def _branch_keys(micro_batches: list[dict]) -> dict[str, list[str]]:
    """The sample keys of one optimizer step, per branch, in micro-batch order."""
    return {br: [k for b in micro_batches if b[br] is not None for k in b[br]["key"]] for br in BRANCHES}


def _run(trainer: Trainer, steps: int) -> list[dict]:
    """``steps`` optimizer steps from the trainer's own loader: logs, consumed keys, weights, EMA after each."""
    batches, out = iter(trainer.loader), []
    for _ in range(steps):
        micro = [next(batches) for _ in range(trainer.cfg.train.grad_accum)]
        logs = trainer.train_step(micro)
        ema = None if trainer.ema is None else [p.clone() for p in trainer.ema.shadow_params]
        out.append({"logs": logs, "keys": _branch_keys(micro), "weights": _weights(trainer), "ema": ema})
    return out


# -- 1. bf16 autocast -------------------------------------------------------------------------------


def test_bf16_train_step_is_finite_and_close_to_fp32(tmp_path):
    fp32 = _trainer(tmp_path / "fp32")
    fp32_steps = _run(fp32, 2)
    del fp32
    _reset_accelerate()
    bf16 = _trainer(tmp_path / "bf16", **{"train.mixed_precision": "bf16"})
    dtypes = set()
    bf16.unet.out[-1].register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    bf16_steps = _run(bf16, 2)

    assert dtypes == {torch.bfloat16}, "the UNet did not run under bf16 autocast"
    for step in bf16_steps:
        assert all(math.isfinite(v) for v in step["logs"].values())
        assert all(torch.isfinite(w).all() for w in step["weights"].values())
    assert bf16_steps[0]["keys"] == fp32_steps[0]["keys"]  # same seed: the same batch
    a, b = fp32_steps[0]["logs"], bf16_steps[0]["logs"]
    assert a["loss"] != b["loss"], "bf16 and fp32 losses are bit-identical: autocast changed nothing"
    for k in ("loss", "image/loss", "video/loss", "video/base", "video/coherence", "grad_norm"):
        assert abs(a[k] - b[k]) <= BF16_REL_TOL * abs(a[k]), (k, a[k], b[k])


# -- 2. gradient accumulation == one big batch ------------------------------------------------------


def test_tiny_model_has_no_active_dropout(tmp_path):
    """Model dropout draws from the global RNG, which micro-batching consumes differently; the
    accumulation equality below needs every dropout of the tiny trainer off."""
    trainer = Trainer(tiny_config(tmp_path / "r"))
    active = [n for n, m in trainer.unet.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert active == []


def test_condition_encoder_dropout_is_a_model_setting(tmp_path):
    from tft2v.models import TFT2VUNet

    trainer = Trainer(tiny_config(tmp_path / "r", **{"recipe.conditions": "[sketch]",
                                                     "model.unet.condition_channels": 4}))
    active = [n for n, m in trainer.unet.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert active == []  # condition_encoder_dropout 0 in the tiny config
    vgen = TFT2VUNet(model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_scales=(), head_dim=8,
                     norm_num_groups=4, conditions=("sketch",), context_dim=8, image_embed_dim=None)
    assert {m.p for n, m in vgen.named_modules() if isinstance(m, torch.nn.Dropout) and "condition" in n and m.p} == {0.05}


def _accum_pair(tmp_path, b: int, steps: int, **extra):
    """(grad_accum 1 with batch 2b, grad_accum 2 with batch b) run side by side for ``steps`` steps."""
    runs = []
    for accum, batch in ((1, 2 * b), (2, b)):
        _reset_accelerate()
        trainer = _trainer(tmp_path / f"accum{accum}", **{"train.grad_accum": accum, "data.image_batch_size": batch,
                                                          "data.video_batch_size": batch, **extra})
        runs.append(_run(trainer, steps))
    return runs


def _assert_same_steps(big: list[dict], accum: list[dict], tol: float = ACCUM_TOL) -> None:
    for i, (x, y) in enumerate(zip(big, accum)):
        # The mixing loader hands toy samples out in stream order: 2 micro-batches of B = the batch of 2B.
        assert x["keys"] == y["keys"], f"step {i + 1}: different samples"
        assert x["logs"].keys() == y["logs"].keys()
        for k in x["logs"]:
            assert abs(x["logs"][k] - y["logs"][k]) <= tol * max(1.0, abs(x["logs"][k])), (i + 1, k)
        diff, name = _max_diff(x["weights"], y["weights"])
        assert diff <= tol, f"step {i + 1}: {name} differs by {diff:.3g}"
        if x["ema"] is not None:
            assert max((p - q).abs().max().item() for p, q in zip(x["ema"], y["ema"])) <= tol


def test_grad_accum_2_of_b_equals_one_batch_of_2b(tmp_path):
    # EMA, CFG text dropout and (all-weight-1) labelled video slots on: every random stream is exercised.
    extra = {"optim.ema_decay": 0.9, "recipe.text_dropout": 0.5, "data.labelled_ratio": 0.25}
    big, accum = _accum_pair(tmp_path, b=2, steps=3, **extra)
    assert big[0]["keys"]["image"] == ["images/000002", "images/000011", "images/000003", "images/000010"]
    _assert_same_steps(big, accum)


def test_grad_accum_matches_with_masked_text_free_videos(tmp_path):
    # labelled_ratio 0.25 labels video slots 3, 7, 11: micro-batches (0, 1) and (2, 3) carry 0 and 1 labelled
    # samples, so the accumulated loss is ½·L(3) where the 2B batch has L(3).
    extra = {"recipe.text_free_videos": False, "data.labelled_ratio": 0.25}
    big, accum = _accum_pair(tmp_path, b=2, steps=2, **extra)
    _assert_same_steps(big, accum)


@pytest.mark.slow
def test_grad_accum_matches_with_compositional_conditions(tmp_path):
    # Conditions extracted per sample, masks and condition dropout from the per-sample generators. local_image and
    # single_sketch are left out: they are constant over frames, so the frame attention's q/k weights
    # get a true gradient of 0 whose rounding noise AdamW normalises up to ~2e-5 weight differences.
    extra = {"recipe.conditions": "[sketch, depth, motion, masked]", "recipe.depth_model": "luminance",
             "data.height": 32, "data.width": 32, "data.toy_object_size": "[6, 12]", "data.num_frames": 2,
             "model.unet.condition_channels": 4, "model.unet.condition_pixel_size": "[256, 256]"}
    big, accum = _accum_pair(tmp_path, b=2, steps=2, **extra)
    _assert_same_steps(big, accum)


# -- 3. torch.compile -------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_model_trains(tmp_path, monkeypatch):
    """``model.compile=true``: two steps, finite and equal to eager's losses.

    The trainer's ``torch.compile`` runs with backend "aot_eager" here: Dynamo captures the UNet (one
    graph, no breaks) and AOTAutograd builds its backward, where compile failures show, but inductor's
    C++ code generation is skipped — cold, it took 34 min wall (10 CPU-min, ~220 g++ runs) on the shared
    2-core box, 3 min with a warm cache. ``TFT2V_TEST_INDUCTOR=1`` runs the real backend (gcc needed).
    """
    inductor = os.environ.get("TFT2V_TEST_INDUCTOR") == "1"
    if not inductor:
        real_compile = torch.compile
        monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw))
    eager = [s["logs"]["loss"] for s in _run(_trainer(tmp_path / "eager"), 2)]
    _reset_accelerate()
    trainer = _trainer(tmp_path / "compiled", **{"model.compile": True})
    assert trainer.model is not trainer.unet and hasattr(trainer.model, "_orig_mod")
    steps = _run(trainer, 2)
    compiled = [s["logs"]["loss"] for s in steps]
    assert all(math.isfinite(x) for x in compiled)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert _max_diff(steps[0]["weights"], steps[1]["weights"])[0] > 0  # the compiled graph trains the UNet


# -- 4. independent random streams ------------------------------------------------------------------


def _recipe(**cfg):
    from tft2v.autoencoder import build_autoencoder
    from tft2v.config import RecipeConfig
    from tft2v.diffusion import ScheduleConfig, build_training_scheduler
    from tft2v.encoders import build_encoder

    encoder = build_encoder("toy", text_dim=16, image_dim=32, max_length=4)
    schedule = ScheduleConfig()
    return Recipe(RecipeConfig(image_tokens_on_videos=False, **cfg), schedule, encoder, build_autoencoder("none"),
                  build_training_scheduler(schedule))


def _zero_batch(b: int, frames: int, size: int = 8) -> dict:
    """Black clips: with x0 = 0, x_t = σ_t·noise, so x_t/|x_t| is the sample's noise direction."""
    return {"pixels": torch.zeros(b, 3, frames, size, size), "cond_frame": torch.zeros(b, 3, size, size),
            "caption": ["a red circle"] * b, "has_text": torch.ones(b, dtype=torch.bool),
            "key": [f"k{i}" for i in range(b)]}


def _draws(recipe: Recipe, branch: str, first: int, count: int, step: int = 0, frames: int = 4):
    """(t (count,), unit noise of channel 0, frame 0 (count, 8·8)) of samples first..first+count-1 of a
    (step, branch) — the values an image and a video sample would share if they drew from one stream."""
    batch = _zero_batch(count, 1 if branch == "image" else frames)
    gens = sample_generators(0, step, branch, first, count)
    inp = recipe.inputs(batch, branch, gens, "cpu")
    noise = inp["x_t"][:, 0, 0].flatten(1)
    return inp["t"], noise / noise.norm(dim=1, keepdim=True)


def _distinct(t: torch.Tensor, noise: torch.Tensor) -> None:
    """Every pair of samples has different noise (|cos| of independent 64-vectors stays ~0.4 at most; a
    shared stream gives 1); timesteps (1000 values) repeat at most once by chance."""
    n = len(t)
    cos = noise @ noise.T
    off = cos[~torch.eye(n, dtype=torch.bool)]
    assert off.abs().max() < 0.9, "two samples drew (nearly) the same noise"
    assert len(set(t.tolist())) >= n - 1, f"timesteps repeat: {t.tolist()}"


def test_sample_generators_do_not_depend_on_the_split():
    """Samples 0..3 drawn as one batch of 4 or as micro-batches 0..1 and 2..2 + 3..3: the same draws."""
    recipe = _recipe()
    t_all, n_all = _draws(recipe, "video", 0, 4)
    parts = [_draws(recipe, "video", first, count) for first, count in ((0, 2), (2, 1), (3, 1))]
    assert torch.equal(t_all, torch.cat([p[0] for p in parts]))
    assert torch.equal(n_all, torch.cat([p[1] for p in parts]))


def test_branches_micro_batches_ranks_and_steps_draw_differently():
    recipe = _recipe()
    world, accum, b = 2, 2, 2
    # Sample indices of a step: (micro · world + rank) · B + i — all 8 distinct for 2 ranks × 2 micro-batches.
    firsts = {(micro, rank): (micro * world + rank) * b for micro in range(accum) for rank in range(world)}
    assert sorted(firsts.values()) == [0, 2, 4, 6]
    per_branch = {}
    for branch in BRANCHES:
        draws = [_draws(recipe, branch, first, b) for first in firsts.values()]
        t = torch.cat([d[0] for d in draws])
        noise = torch.cat([d[1] for d in draws])
        _distinct(t, noise)  # across micro-batches and ranks (and within each micro-batch)
        per_branch[branch] = t, noise
    # Image branch vs video branch, sample by sample (before per-sample generators they shared one stream).
    (t_img, n_img), (t_vid, n_vid) = per_branch["image"], per_branch["video"]
    _distinct(torch.cat([t_img, t_vid]), torch.cat([n_img, n_vid]))
    assert (t_img != t_vid).sum() >= len(t_img) - 1
    # And the next optimizer step draws anew.
    t_next, n_next = _draws(recipe, "video", 0, 8, step=1)
    _distinct(torch.cat([t_vid, t_next]), torch.cat([n_vid, n_next]))


def test_trainer_indexes_samples_over_the_whole_step(tmp_path, monkeypatch):
    """The trainer asks for generators ``(micro · world + rank) · B ..`` of each branch (2 ranks simulated)."""
    import tft2v.train.trainer as trainer_module

    trainer = Trainer(tiny_config(tmp_path / "r", **{"train.grad_accum": 2}))
    calls = []
    real = trainer_module.sample_generators

    def record(seed, step, branch, first, count, device="cpu"):
        calls.append((step, branch, first, count))
        return real(seed, step, branch, first, count, device=device)

    monkeypatch.setattr(trainer_module, "sample_generators", record)
    batches = iter(trainer.loader)
    micro = [next(batches) for _ in range(2)]
    trainer.train_step(micro)
    assert calls == [(0, "image", 0, 2), (0, "video", 0, 2), (0, "image", 2, 2), (0, "video", 2, 2)]
    calls.clear()
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    trainer.rank = 1
    for i, batch in enumerate(micro):
        trainer._micro_loss(batch, i, {"image": 2.0, "video": 2.0})
    assert calls == [(1, "image", 2, 2), (1, "video", 2, 2), (1, "image", 6, 2), (1, "video", 6, 2)]
