"""Typed, frozen training configs: YAML files plus dotted ``--set a.b=c`` overrides.

Every section is a frozen dataclass; loading walks the YAML mapping against the dataclass fields,
coerces values to the annotated types and raises :class:`ConfigError` naming the first unknown key
or bad value (nanoGPT-style "unknown keys are errors", without exec). ``dict`` fields (the UNet and
encoder keyword arguments) are free-form mappings checked by their consumer. The resolved config
is written with every run and checkpoint (:func:`dump_config`), so a run can be reproduced from it.
Videos are ``(B, C, F, H, W)`` everywhere downstream; an image is F = 1.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tft2v.consistency import DistillConfig
from tft2v.data.buckets import Bucket, check_buckets
from tft2v.data.workers import WORKER_START_METHODS
from tft2v.diffusion import ScheduleConfig
from tft2v.errors import ConfigError

DATA_KINDS = ("toy", "sources")
INIT_KINDS = ("scratch", "sd21", "vgen", "pretrained")
DROPOUT_TARGETS = ("empty", "negative")
TRAINABLE = ("all", "condition_encoders")
MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb")  # experiment trackers, through accelerate (wandb runs offline)
# String keys whose value may be the word YAML 1.1 reads as false: accelerate's ``mixed_precision: no``.
FALSE_MEANS = {"train.mixed_precision": "no"}


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how the mixing loader batches them (see tft2v.data.mixing)."""

    kind: str = "toy"
    # toy: the shapes world generated in memory (SPEC §3)
    toy_images: int = 2000
    toy_videos: int = 2000
    toy_captioned_videos: int = 200
    toy_object_size: tuple[int, int] = (6, 12)  # px; smaller for frames under 32 px
    # sources: any spec tft2v.data.sources.build_source accepts ('' = not used)
    images: str = ""
    videos: str = ""
    captioned_videos: str = ""
    data_dir: str = ""
    # a `tft2v precompute` folder: train from its VAE posteriors and embeddings ('' = encode every step)
    cache: str = ""
    height: int = 32
    width: int = 32
    num_frames: int = 16
    fps: float = 8.0
    num_workers: int = 0
    prefetch_factor: int = 2  # samples each worker decodes ahead
    worker_start: str = "forkserver"  # how workers start (tft2v.data.workers): forkserver / spawn / fork
    # mixing (per optimizer micro-step)
    image_batch_size: int = 8
    video_batch_size: int = 4
    ratio: tuple[int, int] = (1, 1)
    labelled_ratio: float = 0.0
    # Aspect / length buckets (tft2v.data.buckets): "HxWxF:B" strings or {height, width, frames, batch}
    # mappings; frames 1 = image buckets. Empty: one geometry (height × width × num_frames) for all.
    buckets: tuple[Bucket, ...] = ()
    index_cache: str = ""  # where file indexes are cached ('' = $TFT2V_CACHE_DIR/index or ~/.cache/tft2v/index)

    def __post_init__(self):
        _choice("data.kind", self.kind, DATA_KINDS)
        _choice("data.worker_start", self.worker_start, WORKER_START_METHODS)
        check_buckets(self.buckets)
        if self.buckets and (self.kind != "sources" or self.cache):
            raise ConfigError("data.buckets need data.kind 'sources' read from files (not the toy world or data.cache)")
        if self.kind == "sources" and not (self.images or self.videos or self.captioned_videos):
            raise ConfigError("data.kind 'sources' needs at least one of data.images / data.videos / data.captioned_videos")
        if min(self.height, self.width, self.num_frames) < 1:
            raise ConfigError(f"data.height/width/num_frames must be >= 1, got {self.height}/{self.width}/{self.num_frames}")


LORA_TARGET_GROUPS = ("temporal", "spatial", "spatial_conv", "text_kv", "attn2_kv")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the UNet (peft); rank 0 = off. ``targets``: groups ``spatial`` (spatial attention
    projections), ``spatial_conv`` (+ ResBlock 3×3 convs), ``temporal`` (temporal attention + temporal
    convs), ``text_kv`` (keys and values of the text cross-attention only: a new caption word, little else
    changed), ``attn2_kv`` (``text_kv`` + keys and values of the temporal transformers' second attention),
    or explicit module-name regular expressions (anything else). Base weights are frozen."""

    rank: int = 0
    alpha: float = 0.0  # 0 = rank (scale 1)
    dropout: float = 0.0
    targets: tuple[str, ...] = ("temporal",)

    def __post_init__(self):
        if self.rank < 0 or self.dropout < 0 or self.dropout >= 1:
            raise ConfigError(f"model.lora: rank must be >= 0 and dropout in [0, 1), got {self.rank}/{self.dropout}")
        if self.rank and not self.targets:
            raise ConfigError("model.lora.targets is empty")


@dataclass(frozen=True)
class ModelConfig:
    """The UNet: keyword arguments of TFT2VUNet plus where its initial weights come from."""

    init: str = "scratch"
    init_path: str = ""
    vgen_config: dict = field(default_factory=dict)  # VGen constructor args; {} = infer from the checkpoint
    unet: dict = field(default_factory=dict)
    gradient_checkpointing: bool = False
    compile: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        _choice("model.init", self.init, INIT_KINDS)
        if self.init != "scratch" and not self.init_path:
            raise ConfigError(f"model.init {self.init!r} needs model.init_path (a local checkpoint path)")


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen text/image encoder: ``kind`` for tft2v.encoders.build_encoder, ``args`` its kwargs."""

    kind: str = "toy"
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AutoencoderConfig:
    """``none`` = pixel space (toy world); ``patch`` = pixel space folded ``patch_size``² into channels
    (lossless, p² fewer UNet positions); ``kl`` = a local diffusers AutoencoderKL folder."""

    kind: str = "none"
    path: str = ""
    patch_size: int = 2


@dataclass(frozen=True)
class RefineConfig:
    """Training a refinement stage (SDEdit video-to-video, as VGen's 1280x720 SR600): each clip and image is
    degraded to ``base_height × base_width`` and resized back, the step's t is drawn from [0, strength·T), and
    the loss targets the clean full-resolution latent (tft2v.train.refine_step)."""

    enabled: bool = False
    # The resolution the base model generates at, for clips of data.height × data.width; a bucket's clips are
    # degraded by the same factors.
    base_height: int = 0
    base_width: int = 0
    strength: float = 0.7  # the refine pipeline's default strength: inversion reaches t = strength·T − 1

    def __post_init__(self):
        if not 0 < self.strength <= 1:
            raise ConfigError(f"recipe.refine.strength must be in (0, 1], got {self.strength}")
        if self.enabled and (self.base_height < 1 or self.base_width < 1):
            raise ConfigError("recipe.refine needs base_height and base_width (the base model's resolution)")


@dataclass(frozen=True)
class RecipeConfig:
    """The TF-T2V step (SPEC §1). Every switch here changes what one training step computes."""

    text_free_videos: bool = True  # False: videos without a caption are left out of the motion branch
    image_tokens_on_images: bool = False  # content branch also gets image tokens of the image itself
    image_tokens_on_videos: bool = True  # motion branch: image tokens of the conditioning frame
    text_dropout: float = 0.1  # CFG: replace the text of a sample with prob p ...
    text_dropout_to: str = "empty"  # ... by the empty-string or the negative-prompt embedding
    negative_prompt: str = ""
    image_token_dropout: float = 0.1  # zero the image tokens of a sample with prob p
    coherence_weight: float = 0.1  # λ of L = L_base + λ·L_coh on video samples; 0 disables
    image_loss_weight: float = 1.0
    video_loss_weight: float = 1.0
    # Share of video samples whose t comes from [video_high_noise_start, T) instead of [0, T): motion, and
    # its direction, is decided at high noise, which uniform t visits rarely (docs/research/direction.md, "Why
    # the caption does not steer direction: the pure-noise prediction").
    video_high_noise_share: float = 0.0
    video_high_noise_start: int = 600
    # Each video's RGB channels in a random order (one permutation per clip): a motion learnt from a few
    # clips cannot carry their colours along (MotionDirector's appearance debiasing, as an augmentation).
    video_colour_permute: bool = False
    conditions: tuple[str, ...] = ()  # compositional: extracted on the fly from every batch
    condition_dropout: bool = True  # VGen's all-zero / all-keep / each-dropped masks
    depth_model: str = ""  # for the "depth" condition: a TorchScript path or "luminance"
    trainable: str = "all"  # "condition_encoders": VideoComposer-style stage, the rest frozen
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self):
        _choice("recipe.text_dropout_to", self.text_dropout_to, DROPOUT_TARGETS)
        _choice("recipe.trainable", self.trainable, TRAINABLE)
        for name in ("text_dropout", "image_token_dropout", "video_high_noise_share"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"recipe.{name} must be in [0, 1], got {p}")
        if self.coherence_weight < 0 or self.image_loss_weight < 0 or self.video_loss_weight < 0:
            raise ConfigError("recipe.coherence_weight and the branch loss weights must be >= 0")
        if self.video_high_noise_start < 0:
            raise ConfigError(f"recipe.video_high_noise_start must be >= 0, got {self.video_high_noise_start}")
        if self.trainable == "condition_encoders" and not self.conditions:
            raise ConfigError("recipe.trainable 'condition_encoders' needs recipe.conditions")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup + cosine decay (diffusers.optimization), gradient clipping, EMA."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.0  # 0 disables EMA
    # torch's fused AdamW kernel (unsharded models; FSDP and the untested DeepSpeed path keep torch's default):
    # on a CPU the toy UNet's optimizer step takes 3.7 ms instead of 17 (docs/research/quickstart_plan.md,
    # "Quickstart at 8 frames").
    fused: bool = True

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: steps, precision, accumulation, logging, checkpoints, validation."""

    max_steps: int = 1000
    grad_accum: int = 1  # mixing-loader steps per optimizer step
    mixed_precision: str = "no"
    log_every: int = 10
    checkpoint_every: int = 500  # 0: only the final checkpoint
    keep_last: int = 3
    validate_every: int = 0  # 0: only at the end (if validation_prompts)
    validation_prompts: tuple[str, ...] = ()
    validation_frames: int = 16
    validation_steps: int = 25
    guidance_scale: float = 9.0
    progress: bool = True
    trackers: tuple[str, ...] = ("tensorboard",)  # any of TRACKERS; [] = metrics.jsonl only
    export: bool = True  # write the pipeline model folder at the end (a LoRA run's: adapter + base reference)
    export_fused: bool = False  # a LoRA run also writes model_fused/: the adapter merged into a full model
    log_samples: bool = False  # samples.jsonl: the keys every step consumed, per rank (tft2v.train.sample_log)
    # Steps with a non-finite loss or gradients are skipped, weights untouched; this many in a row stop the run.
    max_nonfinite_skips: int = 8

    def __post_init__(self):
        _choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in self.trackers:
            _choice("train.trackers", name, TRACKERS)
        if self.max_steps < 1 or self.grad_accum < 1 or self.keep_last < 1 or self.log_every < 1:
            raise ConfigError("train.max_steps, grad_accum, keep_last and log_every must be >= 1")
        if self.max_nonfinite_skips < 1:
            raise ConfigError(f"train.max_nonfinite_skips must be >= 1, got {self.max_nonfinite_skips}")
        if self.export_fused and not self.export:
            raise ConfigError("train.export_fused writes beside the exported model folder: it needs train.export: true")


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    seed: int = 0
    out_dir: str = "runs/tft2v"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # read by `tft2v distill` only

    def __post_init__(self):
        if self.distill.learns_guidance and self.model.lora.rank:
            raise ConfigError("distill.guidance_w_range trains a guidance embedding, which a LoRA adapter does not "
                              "hold: distil in full (model.lora.rank 0) or fix w (distill.guidance_w_range: [])")
        if self.train.export_fused and not self.model.lora.rank:
            raise ConfigError("train.export_fused fuses a LoRA adapter: it needs model.lora.rank > 0")
        refine = self.recipe.refine
        if refine.enabled:
            d = self.data
            if refine.base_height > d.height or refine.base_width > d.width:
                raise ConfigError(f"recipe.refine base {refine.base_height}x{refine.base_width} is larger than the "
                                  f"training clips' {d.height}x{d.width}")
            if self.recipe.video_high_noise_share:
                raise ConfigError("recipe.refine draws t from [0, strength·T): recipe.video_high_noise_share must be 0")
            if self.train.validation_prompts:
                raise ConfigError("a refinement stage does not generate from prompts: leave train.validation_prompts "
                                  "empty (check it with `tft2v refine`)")
            if d.cache:
                raise ConfigError("recipe.refine degrades pixels; a data.cache holds latents only")
        if self.recipe.video_high_noise_start >= self.schedule.num_train_timesteps:
            raise ConfigError(f"recipe.video_high_noise_start must be < schedule.num_train_timesteps "
                              f"({self.schedule.num_train_timesteps}), got {self.recipe.video_high_noise_start}")


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _coerce(key: str, value, tp):
    """Convert a YAML value to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if hasattr(tp, "coerce"):  # a value type with its own short form (data.buckets)
        return tp.coerce(key, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if value is False and key in FALSE_MEANS:
            return FALSE_MEANS[key]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; known keys here: {sorted(names)}")
    kwargs = {k: _coerce(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config section {prefix or 'root'}: {e}") from None


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) of a config, ready for YAML/JSON."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a nested dict; values are parsed as YAML (``1e-4``, ``[1,2]``, ``true``)."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"bad override key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def _migrate(data: dict) -> dict:
    """Read configs written before ``train.trackers`` replaced ``train.tensorboard`` (saved runs stay loadable)."""
    train = data.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return data
    if "trackers" in train:
        raise ConfigError("train.tensorboard was replaced by train.trackers; set only train.trackers")
    train = dict(train)
    train["trackers"] = ["tensorboard"] if train.pop("tensorboard") else []
    return {**data, "train": train}


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from the defaults), apply overrides, validate: -> Config."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping at the top level")
    return _build(Config, _migrate(apply_overrides(data, list(overrides))))


def config_from_dict(data: dict) -> Config:
    """Validate a nested dict (e.g. a saved ``config.yaml``) into a Config."""
    return _build(Config, _migrate(data))


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """The resolved config as YAML text; also written to ``path`` when given."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
