"""``tft2v quickstart``: the TF-T2V recipe end to end on the shapes world, offline, on a CPU.

One shared content stage (image–text pairs only) is trained first; five variants then continue from
it for the same number of steps each, so the comparisons differ only in what the paper varies:

* ``images_only``      — image–text pairs only (no videos ever);
* ``text_free``        — + text-free videos, no coherence loss (λ = 0);
* ``tft2v``            — + text-free videos + temporal coherence loss (λ = :data:`TOY_COHERENCE_WEIGHT`): TF-T2V;
* ``semi_supervised``  — TF-T2V + captioned videos for half the video slots (semi-supervised);
* ``compositional``    — the TF-T2V model continued with motion-vector and sketch conditions extracted on the
  fly from its image and text-free video batches (condition dropout as VGen): condition encoders are added
  to it, as VideoComposer starts from a text-to-video model, for :attr:`Plan.compositional_steps`, with more
  clips per step and more high-noise video samples (:data:`COMPOSITIONAL_BATCHES`).

Each is sampled on the same prompts and seeds and scored with the analytic shapes-world evaluators
(tft2v.metrics.toy); the compositional model is also sampled with each condition, extracted from
ground-truth clips outside the training data (tft2v.metrics.toy_conditions). By default the run follows a
fixed :class:`Plan` (steps, batch sizes, seeds), so the same commit and seed do the same work and give the
same numbers on any machine (up to float differences between CPUs); a short calibration only predicts the
wall time. ``--minutes N`` is the
explicit budget mode: the step counts are fitted to N minutes instead, and the report says so.
Videos are (B, 3, F, H, W) in [-1, 1] throughout.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tft2v.data import shapes_spec as spec
from tft2v.errors import TFT2VError

# Clip length of the quickstart's videos: 8-frame clips of the shapes world (its default is 16) move coherently
# in 25–44 % of samples after the same steps (16: 3–11 %), at 0.7× the cost per video step (benchmarks/RESULTS.md,
# "Quickstart at 8 frames").
QUICKSTART_FRAMES = 8

# The toy model: a space-to-depth "latent" (32×32×3 → 16×16×12) and a small UNet with the full
# TF-T2V anatomy (temporal convs, spatial + temporal transformers, image tokens).
BASE_CONFIG = {
    "data": {"kind": "toy", "toy_images": 4000, "toy_videos": 2000, "toy_captioned_videos": 400,
             "height": spec.FRAME_SIZE, "width": spec.FRAME_SIZE, "num_frames": QUICKSTART_FRAMES, "fps": 8,
             "image_batch_size": 8, "video_batch_size": 2},
    "model": {"unet": {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                       "attention_scales": [0.5, 0.25], "head_dim": 16, "init_temporal_heads": 2,
                       "norm_num_groups": 8, "condition_channels": 0, "dropout": 0.0, "temporal_conv_dropout": 0.0}},
    "encoder": {"kind": "toy", "args": {"text_dim": 64, "image_dim": 64, "max_length": 8}},
    "autoencoder": {"kind": "patch", "patch_size": 2},
    "schedule": {"prediction_type": "v_prediction", "offset_noise": 0.1},
    "recipe": {"text_dropout": 0.1, "image_token_dropout": 0.1},
    "optim": {"lr": 2e-3, "warmup_steps": 20, "max_grad_norm": 1.0, "ema_decay": 0.0},
    "train": {"log_every": 10, "checkpoint_every": 0, "keep_last": 1, "progress": False, "trackers": [],
              "guidance_scale": 3.0},
}


# The shared content stage: image–text pairs only, with a 4× larger image batch than the variants.
CONTENT_STAGE = {"data": {"ratio": [1, 0], "image_batch_size": 32}, "recipe": {"coherence_weight": 0.0}}


# torch's thread count for the whole run: float results depend on it (benchmarks/RESULTS.md, "Threads
# and reproducibility"), so a 4- or 16-core machine runs the reference 2-core box's arithmetic.
QUICKSTART_THREADS = 2


# λ of the TF-T2V variants: the paper's 0.1 moves consistency too little to measure at toy scale
# (docs/research/motion_learning.md: λ = 1 moved pixel consistency +0.007 against λ = 0, λ = 0.1 +0.001).
TOY_COHERENCE_WEIGHT = 1.0


# Compositional conditions: the two that carry motion (VideoComposer's motion vectors, and a sketch per frame).
COMPOSITIONAL_CONDITIONS = ("motion", "sketch")
# Channels of the summed condition encodings concatenated to the latent (VGen's compositional model: 8).
CONDITION_CHANNELS = 8
# The condition encoders pool to condition_pixel_size / 8 (a VGen fact): the latent's size × 8.
CONDITION_PIXEL_SIZE = [8 * spec.FRAME_SIZE // BASE_CONFIG["autoencoder"]["patch_size"]] * 2


# The motion field is learnt from videos only (an image's field is zero) and mostly matters at high noise,
# where the layout is decided: at the variants' batches (8 images + 2 clips) and uniform t it did not steer
# after 100 steps (direction 21–25 %, chance 25 %) while the sketch did (83–100 %). Four clips per step with
# half the video samples' t in [600, 1000) steer after 150 steps (67 %; docs/research/compositional.md).
COMPOSITIONAL_BATCHES = {"image_batch_size": 4, "video_batch_size": 4}
COMPOSITIONAL_HIGH_NOISE_SHARE = 0.5


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    overrides: dict = field(default_factory=dict)
    start: str = ""  # the variant whose model it continues from; "" = the content stage


VARIANTS = (
    Variant("images_only", "image–text only", {"data": {"ratio": [1, 0]}, "recipe": {"coherence_weight": 0.0}}),
    Variant("text_free", "+ text-free videos (λ=0)", {"recipe": {"coherence_weight": 0.0}}),
    Variant("tft2v", f"+ text-free videos + coherence loss (λ={TOY_COHERENCE_WEIGHT:g})",
            {"recipe": {"coherence_weight": TOY_COHERENCE_WEIGHT}}),
    Variant("semi_supervised", "TF-T2V + captioned videos (semi-supervised)",
            {"recipe": {"coherence_weight": TOY_COHERENCE_WEIGHT}, "data": {"labelled_ratio": 0.5}}),
    Variant("compositional", "TF-T2V + motion and sketch conditions (compositional)",
            {"recipe": {"coherence_weight": TOY_COHERENCE_WEIGHT, "conditions": list(COMPOSITIONAL_CONDITIONS),
                        "video_high_noise_share": COMPOSITIONAL_HIGH_NOISE_SHARE},
             "data": COMPOSITIONAL_BATCHES,
             "model": {"unet": {"condition_channels": CONDITION_CHANNELS, "condition_pixel_size": CONDITION_PIXEL_SIZE}}},
            start="tft2v"),
)

# Seeds per (colour×shape, 'moving …') prompt: claims compare models on the same prompts and seeds. Direction
# from the caption is reported, not claimed, so its 12 prompts get 1 seed (4 until the compositional variant
# needed the time).
EVAL_SEEDS = (2, 1)
# On a machine too slow to sample that many clips in its share of the budget, half as many.
REDUCED_EVAL_SEEDS = (1, 1)
# Seeds per colour×shape prompt for the compositional model, sampled without a condition and with each one.
COMPOSITIONAL_SEEDS = 1
# DPM-Solver++ at 8 steps scores as well as at 20 on the toy world (docs/research/motion_learning.md); fewer is
# untested.
MIN_SAMPLE_STEPS = 8

# Evaluation prompts: every colour×shape (held-out combos included), and directional prompts.
DIRECTIONS = spec.MOTIONS
DIRECTION_COMBOS = (("red", "circle"), ("blue", "square"), ("red", "triangle"))  # the last is held out


def appearance_prompts() -> list[str]:
    return [spec.caption(c, s) for c in spec.COLOURS for s in spec.SHAPES]


def direction_prompts() -> list[str]:
    return [spec.caption(c, s, d) for c, s in DIRECTION_COMBOS for d in DIRECTIONS]


def evaluation_prompts(variant: str, seeds: tuple[int, int] = EVAL_SEEDS) -> tuple[list[str], list[str]]:
    """(appearance, direction) prompts, repeated ``seeds`` times; a model trained on images only is
    not asked for motion, nor is the compositional one by its text (its conditions ask instead)."""
    if variant == "compositional":
        return appearance_prompts() * COMPOSITIONAL_SEEDS, []
    directed = [] if variant == "images_only" else direction_prompts() * seeds[1]
    return appearance_prompts() * seeds[0], directed


def count_clips(seeds: tuple[int, int]) -> int:
    """Clips sampled over all variants with ``seeds`` per prompt, the compositional model's conditioned ones too."""
    plain = sum(len(a) + len(d) for a, d in (evaluation_prompts(v.name, seeds) for v in VARIANTS))
    return plain + len(COMPOSITIONAL_CONDITIONS) * len(evaluation_prompts("compositional", seeds)[0])


# Each variant starts a fresh AdamW; without a warmup its first updates undo the content stage
# (image loss 0.08 → 0.32 in 10 steps; docs/research/quickstart_plan.md, "Variant warmup").
VARIANT_WARMUP_FRACTION = 0.12


def variant_config(base: dict, variant: Variant, init_path: str, steps: int, seed: int, out_dir: Path) -> dict:
    """The training config of one variant: ``base`` + its overrides, continued from the content stage."""
    return merge_config(merge_config(base, variant.overrides), {
        "seed": seed, "out_dir": str(out_dir), "model": {"init": "pretrained", "init_path": str(init_path)},
        "optim": {"warmup_steps": max(1, round(VARIANT_WARMUP_FRACTION * steps))}, "train": {"max_steps": steps}})


def merge_config(base: dict, extra: dict) -> dict:
    """A copy of the nested config dict ``base`` with ``extra``'s keys set, sub-dicts merged key by key."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        out[k] = merge_config(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class Plan:
    """The work of one quickstart run, identical on every machine."""

    name: str
    content_steps: int
    variant_steps: int
    sample_steps: int
    eval_seeds: tuple[int, int] = EVAL_SEEDS
    compositional_steps: int = 150  # on top of the TF-T2V variant's variant_steps


# default: step counts cut to fit 10 minutes on the reference box (0.30 s image step) with the compositional
# stage; ≈ 556–560 s there, estimated against that box's run of the previous plan (docs/research/quickstart_plan.md,
# "Fitting the compositional variant"). full: 4× the variant and compositional steps on the same content stage.
PLANS = {"default": Plan("default", content_steps=600, variant_steps=200, sample_steps=MIN_SAMPLE_STEPS),
         "full": Plan("full", content_steps=600, variant_steps=800, sample_steps=MIN_SAMPLE_STEPS,
                      compositional_steps=600)}
# Budget mode: the compositional stage's steps as a fraction of the variants' (the default plan's 150 / 200).
COMPOSITIONAL_FRACTION = 0.75


@dataclass
class Budget:
    """Seconds per phase, fitted from the measured cost of one step of each kind."""

    total_s: float
    image_step_s: float = 0.0
    mixed_step_s: float = 0.0
    sample_s_per_clip_step: float = 0.0
    content_steps: int = 0
    variant_steps: int = 0
    sample_steps: int = 20
    compositional_step_s: float = 0.0
    compositional_steps: int = 0
    spent: dict = field(default_factory=dict)
    eval_seeds: tuple[int, int] = EVAL_SEEDS

    def predicted_s(self) -> float:
        """Seconds the training and sampling of the current step counts take at the calibrated speeds."""
        per_variant_step = self.image_step_s / 4 + 3 * self.mixed_step_s
        clips = count_clips(self.eval_seeds)
        return (self.content_steps * self.image_step_s + self.variant_steps * per_variant_step
                + self.compositional_steps * self.compositional_step_s
                + clips * self.sample_steps * self.sample_s_per_clip_step)

    def follow(self, plan: Plan) -> None:
        """Take the plan's step counts and seeds (the fixed mode: the calibration only predicts time)."""
        self.content_steps, self.variant_steps = plan.content_steps, plan.variant_steps
        self.sample_steps, self.eval_seeds = plan.sample_steps, plan.eval_seeds
        self.compositional_steps = plan.compositional_steps

    def fit(self) -> None:
        """Split the budget: ~25 % sampling (8–20 DPM++ steps per clip), 5 % calibration, export and
        the report (measured: ~2 %), training the rest (40 % of it the content stage, 60 % the five
        variants). On a slow machine the evaluation drops to :data:`REDUCED_EVAL_SEEDS` when the full
        one would need over 40 % of the budget at 8 steps, and sampling's overrun comes out of
        training, not the total."""
        per_step = max(1e-6, self.sample_s_per_clip_step)
        self.eval_seeds = EVAL_SEEDS
        if count_clips(EVAL_SEEDS) * MIN_SAMPLE_STEPS * per_step > 0.4 * self.total_s:
            self.eval_seeds = REDUCED_EVAL_SEEDS
        clips = count_clips(self.eval_seeds)
        self.sample_steps = int(max(MIN_SAMPLE_STEPS, min(20, 0.25 * self.total_s / (clips * per_step))))
        train = 0.95 * self.total_s - clips * self.sample_steps * per_step
        self.content_steps = max(20, int(0.4 * train / self.image_step_s))
        # The images_only variant's steps carry a quarter of the content stage's images; the three
        # video variants each run a mixed (image + video) step, and the compositional stage a fraction of
        # that many mixed steps with conditions.
        per_variant_step = (self.image_step_s / 4 + 3 * self.mixed_step_s
                            + COMPOSITIONAL_FRACTION * self.compositional_step_s)
        self.variant_steps = max(20, int(0.6 * train / per_variant_step))
        self.compositional_steps = max(10, int(COMPOSITIONAL_FRACTION * self.variant_steps))


def _load(data: dict):
    from tft2v.config import config_from_dict

    return config_from_dict(data)


def _calibrate(base: dict, out: Path, seed: int, log) -> tuple[float, float, float, float]:
    """Measured seconds per content-stage step, per mixed step, per sampled clip-step (CFG batched) and
    per compositional (mixed, with conditions) step."""
    from tft2v.train.trainer import Trainer

    times = {}
    compositional = next(v for v in VARIANTS if v.name == "compositional").overrides
    for name, extra in (("image", CONTENT_STAGE), ("compositional", compositional), ("mixed", {})):
        cfg = _load(merge_config(base, merge_config(extra, {"seed": seed, "out_dir": str(out / f"calib_{name}"),
                                                            "train": {"max_steps": 4, "export": False}})))
        with _quiet(Path(cfg.out_dir)):
            trainer = Trainer(cfg, overwrite=True)  # the quickstart owns its run folders
        batches = iter(trainer.loader)
        trainer.model.train()
        trainer.train_step([next(batches)])  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            trainer.train_step([next(batches)])
        times[name] = (time.perf_counter() - t0) / 2
    from tft2v.sampling import guided_prediction

    d, ae, enc = cfg.data, trainer.autoencoder, trainer.encoder
    f = ae.spatial_factor
    x = torch.randn(8, ae.latent_channels, d.num_frames, d.height // f, d.width // f)
    text = {"encoder_hidden_states": torch.randn(8, enc.max_length, enc.text_dim)}
    trainer.unet.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        guided_prediction(trainer.unet, x, torch.tensor([500]), text, dict(text), 3.0)
        per_clip_step = (time.perf_counter() - t0) / 8
    log(f"calibration: image step {times['image']:.2f} s, mixed step {times['mixed']:.2f} s, compositional step "
        f"{times['compositional']:.2f} s, sampling {per_clip_step * 1000:.0f} ms per clip-step")
    return times["image"], times["mixed"], per_clip_step, times["compositional"]


@contextlib.contextmanager
def _quiet(run_dir: Path):
    """Send a run's own console output (resolved config, summary) to ``run_dir/train.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as f, contextlib.redirect_stderr(f):
        yield


def _train(cfg_dict: dict, log) -> dict:
    from tft2v.train.trainer import train

    t0 = time.perf_counter()
    with _quiet(Path(cfg_dict["out_dir"])):
        summary = train(_load(cfg_dict), overwrite=True)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    log(f"  {Path(cfg_dict['out_dir']).name}: {summary['steps']} steps in {summary['wall_s']} s, "
        f"loss {summary['loss_first']} -> {summary['loss_last']}")
    return summary


# Classifier-free guidance of the evaluation samples: the scale the toy runs validate with (train.guidance_scale).
SAMPLE_GUIDANCE = 3.0
# Clips per pipeline call.
SAMPLE_BATCH = 15
# Condition clips come from the text-free video generator seeded far from the runs' own seeds (seed, seed + 1).
CONDITION_CLIPS_SEED = 10**6


def _pipeline(model_dir: Path):
    """A model folder's pipeline with the quickstart's sampler (DPM-Solver++) and no progress bar."""
    from tft2v.pipeline import TFT2VPipeline

    pipe = TFT2VPipeline.from_pretrained(model_dir)
    pipe.set_scheduler("dpmpp")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_prompts(pipe, prompts: list[str], steps: int, seed: int, batch: int = SAMPLE_BATCH,
                   condition_videos: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(N, 3, F, H, W) in [-1, 1] with the quickstart's guidance and empty negative prompt; clip i uses
    generator seed ``seed + i`` whatever the batching. ``condition_videos`` {name: (N, 3, F, H, W)}: clip i
    is conditioned on row i of each (the pipeline extracts the condition as training does)."""
    out = []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(part))]
        videos = {k: v[start:start + batch] for k, v in condition_videos.items()} if condition_videos else None
        out.append(pipe(part, negative_prompt="", num_inference_steps=steps, guidance_scale=SAMPLE_GUIDANCE,
                        generator=gens, output_type="pt", condition_videos=videos))
    return torch.cat(out)


def condition_clips(n: int, seed: int, data: dict) -> tuple[torch.Tensor, list[dict]]:
    """``n`` ground-truth text-free clips (n, 3, F, H, W) in [-1, 1] that no run trains on (their own seed
    stream), clip j moving in direction ``MOTIONS[j % 4]``, and their truths (motion, track, …)."""
    from tft2v.data.toy import ToyWorld, generate

    world = ToyWorld(size=data["height"], frames=data["num_frames"])
    pool = generate("videos", 8 * n, seed=CONDITION_CLIPS_SEED + seed, world=world)
    free = list(range(len(pool)))
    picked = []
    for j in range(n):
        want = spec.MOTIONS.index(DIRECTIONS[j % len(DIRECTIONS)])
        picked.append(next(i for i in free if pool.motion[i] == want))
        free.remove(picked[-1])
    return torch.stack([pool.sample(i)["pixels"] for i in picked]), [pool.truth(i) for i in picked]


def _evaluate(clips: torch.Tensor, appearance: list[str], directed: list[str], following=None) -> dict:
    """Scores every clip once; the appearance and direction summaries are views of those per-clip results.
    ``following`` (kinds, condition motions, condition tracks) per clip after the appearance ones: those
    clips were sampled with a condition and are scored against its clip instead (``conditioned``)."""
    from tft2v.metrics.toy import evaluate_toy, summarise
    from tft2v.metrics.toy_conditions import follow_condition

    every = evaluate_toy(clips, appearance + directed)
    scored = every["clips"]
    head, tail = scored[:len(appearance)], scored[len(appearance):]
    out = {"appearance": {**summarise(head), "clips": head},
           "direction": {**summarise(tail), "clips": tail} if directed else None, "all": every}
    if following is not None:
        kinds, motions, tracks = following
        n = len(head)
        for i, c in enumerate(scored):
            c.update(follow_condition(c, motions[i % n], tracks[i % n]))
        out["conditioned"] = {kind: scored[k * n:(k + 1) * n] for k, kind in enumerate(kinds)}
        out["direction"] = None
    return out


def run_quickstart(out_dir: str | Path = "quickstart_out", minutes: float | None = None, seed: int = 0, log=print,
                   base: dict | None = None, plan: str | Plan = "default") -> Path:
    """Train, sample, evaluate and write ``out_dir/report.md``; returns the report path.

    Runs the fixed plan ``plan`` (a name in :data:`PLANS` or a :class:`Plan`), or with ``minutes`` fits
    the step counts to that budget instead. ``base`` replaces :data:`BASE_CONFIG` (e.g. a smaller model
    for a smoke test). Runs on :data:`QUICKSTART_THREADS` torch threads whatever the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(QUICKSTART_THREADS)
    try:
        return _run_quickstart(out_dir, minutes, seed, log, base, plan)
    finally:
        torch.set_num_threads(before)


def _run_quickstart(out_dir, minutes, seed, log, base, plan) -> Path:
    from tft2v.quickstart_report import write_report

    if isinstance(plan, str):
        if plan not in PLANS:
            raise TFT2VError(f"unknown plan {plan!r}; expected one of {sorted(PLANS)}")
        plan = PLANS[plan]
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    budget = Budget(total_s=(minutes or 0) * 60)
    t0 = time.perf_counter()
    base = BASE_CONFIG if base is None else base
    (budget.image_step_s, budget.mixed_step_s, budget.sample_s_per_clip_step,
     budget.compositional_step_s) = _calibrate(base, out / "runs", seed, log)
    if minutes is None:
        budget.follow(plan)
    else:
        budget.fit()
    n_clips = count_clips(budget.eval_seeds)
    budget.spent["calibration"] = time.perf_counter() - t0
    mode = f"plan '{plan.name}'" if minutes is None else f"fitted to a {minutes:g}-minute budget"
    log(f"{mode}: content stage {budget.content_steps} steps, {budget.variant_steps} steps per variant "
        f"(+ {budget.compositional_steps} compositional), {budget.sample_steps} DPM-Solver++ steps per clip, {n_clips} clips in all, {QUICKSTART_THREADS} threads"
        + ("" if budget.eval_seeds == EVAL_SEEDS else
           f" ({budget.eval_seeds[0]}/{budget.eval_seeds[1]} seeds per prompt instead of "
           f"{EVAL_SEEDS[0]}/{EVAL_SEEDS[1]}: sampling is slow on this machine)"))
    log(f"ETA on this machine: ~{(budget.predicted_s() + budget.spent['calibration']) / 60:.1f} min")

    runs = out / "runs"
    t0 = time.perf_counter()
    log("training the shared content stage (image–text pairs only)")
    content = _train(merge_config(merge_config(base, CONTENT_STAGE), {
        "seed": seed, "out_dir": str(runs / "content"), "train": {"max_steps": budget.content_steps}}), log)
    budget.spent["train: content stage"] = time.perf_counter() - t0

    results = {}
    for v in VARIANTS:
        t0 = time.perf_counter()
        log(f"training variant {v.name}: {v.title}")
        start = results[v.start]["train"]["model"] if v.start else content["model"]
        steps = budget.compositional_steps if v.name == "compositional" else budget.variant_steps
        summary = _train(variant_config(base, v, start, steps, seed + 1, runs / v.name), log)
        budget.spent[f"train: {v.name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        app, directed = evaluation_prompts(v.name, budget.eval_seeds)
        sample_seed = 1000 * (seed + 1)
        seeds = [sample_seed + i for i in range(len(app + directed))]
        pipe = _pipeline(Path(summary["model"]))
        clips = sample_prompts(pipe, app + directed, budget.sample_steps, seed=sample_seed)
        kinds, following, conditioned = ["appearance"] * len(app) + ["direction"] * len(directed), None, {}
        if v.name == "compositional":
            # The same prompts and seeds again, with each condition of a held-out clip per prompt.
            sources, truths = condition_clips(len(app), seed, base["data"])
            clips = torch.cat([clips] + [sample_prompts(pipe, app, budget.sample_steps, seed=sample_seed,
                                                        condition_videos={name: sources})
                                         for name in COMPOSITIONAL_CONDITIONS])
            directed, seeds = app * len(COMPOSITIONAL_CONDITIONS), seeds * (1 + len(COMPOSITIONAL_CONDITIONS))
            kinds = ["appearance"] * len(app) + [name for name in COMPOSITIONAL_CONDITIONS for _ in app]
            following = (("none", *COMPOSITIONAL_CONDITIONS), [t["motion"] for t in truths], [t["track"] for t in truths])
            conditioned = {"condition_clips": {"clips": sources, "truth": truths},
                           "condition_index": [None] * len(app) + list(range(len(app))) * len(COMPOSITIONAL_CONDITIONS)}
        budget.spent[f"sample: {v.name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results[v.name] = {
            "variant": v, "train": summary, "clips": clips, "prompts": app + directed, "seeds": seeds, "kinds": kinds,
            "sampling": {"scheduler": "dpmpp", "steps": budget.sample_steps, "guidance": SAMPLE_GUIDANCE,
                         "negative_prompt": ""},
            **_evaluate(clips, app, directed, following), **conditioned,
        }
        budget.spent[f"score: {v.name}"] = time.perf_counter() - t0
        a, d = results[v.name]["appearance"], results[v.name]["direction"]
        log(f"  {v.name}: object present {a['present_fraction']:.2f}, colour {a['colour_accuracy']:.2f}, "
            f"shape {a['shape_accuracy']:.2f}, moving {a['moving_fraction']:.2f}, coherent {a['coherent_fraction']:.2f}"
            + (f", direction {d['direction_accuracy']:.2f}" if d else "")
            + "".join(f", follows the {k} condition {sum(c['follows'] for c in cs) / len(cs):.2f}"
                      for k, cs in results[v.name].get("conditioned", {}).items() if k != "none"))

    budget.spent["total (before the report)"] = time.perf_counter() - t_start
    report = write_report(out, results, budget, content, seed=seed, minutes=minutes, data=base["data"], plan=plan.name)
    (out / "timing.json").write_text(json.dumps({k: round(v, 1) for k, v in budget.spent.items()}, indent=2))
    log(f"report: {report}")
    return report
