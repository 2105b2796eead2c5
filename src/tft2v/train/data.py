"""Build the training components named by a config: the mixed loader, encoder, autoencoder, UNet.

Samples are ``pixels`` (3, F, H, W) in [-1, 1] (F = 1 for images), batched to (B, 3, F, H, W) by the
mixing loader. ``data.kind: toy`` generates the shapes world in memory; ``data.kind: sources`` streams
folders / manifests / VGen lists / tar shards through :func:`tft2v.data.sources.build_source`. Every
finite stream follows :mod:`tft2v.data.sharding`: a permutation per epoch from the run seed, split over
ranks, so shuffling is reproducible (unlike VGen's unshuffled single-GPU loader, VGen issue #137) and
each sample is read once per epoch, by one rank.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from tft2v.config import Config
from tft2v.data.mixing import MixConfig, MixedLoader
from tft2v.errors import ConfigError, TFT2VError


def mix_config(cfg: Config) -> MixConfig:
    """The loader's MixConfig; without text-free videos and without labelled slots, no video batches."""
    d, r = cfg.data, cfg.recipe
    ratio = tuple(d.ratio)
    if not r.text_free_videos and d.labelled_ratio == 0.0:
        ratio = (ratio[0], 0)
    return MixConfig(d.image_batch_size, d.video_batch_size, ratio, d.labelled_ratio)


def branch_strides(cfg: Config) -> dict[str, int]:
    """Per branch, the largest micro-batch a rank can get: sample generators are numbered in steps of it,
    so ranks holding buckets of different batch sizes never share a generator."""
    d = cfg.data
    if not d.buckets:
        return {"image": d.image_batch_size, "video": d.video_batch_size}
    image = [b.batch for b in d.buckets if b.frames == 1]
    video = [b.batch for b in d.buckets if b.frames > 1]
    return {"image": max(image, default=1), "video": max(video, default=1)}


def wanted_streams(mix: MixConfig) -> tuple[bool, bool, bool]:
    """Which pixel streams the mix reads: (images, text-free videos, captioned videos)."""
    videos = mix.ratio[1] > 0
    return mix.ratio[0] > 0, videos and mix.labelled_ratio < 1, videos and mix.labelled_ratio > 0


def build_loader(cfg: Config, rank: int = 0, world_size: int = 1, encoder=None, autoencoder=None) -> MixedLoader:
    """The endless image/video step iterator for this rank.

    With ``data.cache`` the streams are the cache's; ``encoder`` and ``autoencoder`` (when given) must
    be the ones it was built with.
    """
    mix = mix_config(cfg)
    if cfg.data.cache:
        return _cached_loader(cfg, mix, rank, world_size, encoder, autoencoder)
    wanted = wanted_streams(mix)
    if cfg.data.kind == "toy":
        streams = toy_streams(cfg, rank, *wanted, world_size=world_size)
    else:
        streams = _source_streams(cfg, rank, world_size, *wanted)
    return MixedLoader(streams["images"], streams["videos"], mix, captioned_videos=streams["captioned_videos"],
                       batched=bool(cfg.data.buckets))


def _cached_loader(cfg: Config, mix: MixConfig, rank: int, world_size: int, encoder, autoencoder) -> MixedLoader:
    """Streams of a ``tft2v precompute`` folder: latents and embeddings instead of pixels (tft2v.data.cache)."""
    from tft2v.data.cache import CachedSource, check_manifest, collate_cached, read_manifest

    d = cfg.data
    if cfg.recipe.conditions:
        raise ConfigError("recipe.conditions are extracted from pixels; they cannot train from data.cache")
    manifest = read_manifest(d.cache)
    geometry = {"height": d.height, "width": d.width, "num_frames": d.num_frames, "fps": d.fps}
    check_manifest(manifest, encoder, autoencoder, geometry, where=f"data.cache {d.cache}")
    have = manifest["streams"]
    want_videos = mix.ratio[1] > 0
    # Labelled slots read the captioned stream when the cache has one, else the videos' own captions.
    captioned = want_videos and mix.labelled_ratio > 0 and "captioned_videos" in have
    wanted = {"images": mix.ratio[0] > 0, "videos": want_videos and (mix.labelled_ratio < 1 or not captioned),
              "captioned_videos": captioned}
    streams = {}
    for name, use in wanted.items():
        if use and name not in have:
            raise ConfigError(f"data.cache {d.cache} has no {name!r} stream, which this recipe needs")
        streams[name] = CachedSource(d.cache, name, seed=cfg.seed, rank=rank, world_size=world_size) if use else None
    return MixedLoader(streams["images"], streams["videos"], mix, captioned_videos=streams["captioned_videos"],
                       collate_fn=collate_cached)


def toy_streams(cfg: Config, rank: int, images: bool, videos: bool, captioned: bool, world_size: int = 1) -> dict:
    """The shapes-world streams of ``data.kind: toy`` for this rank, keyed like the mixing loader's
    inputs: "images", "videos" (text-free), "captioned_videos"; a stream whose flag is False is None.

    Each stream is an endless seeded walk over a fixed set of ``data.toy_<name>`` samples (pixels
    (3, F, H, W) in [-1, 1], F = 1 for images): every rank generates the same sets (from ``seed``) and
    reads its share of each epoch's permutation, as every finite source does (tft2v.data.sharding).
    Raises ConfigError for non-square frames or a wanted set with fewer samples than ranks.
    """
    from tft2v.data.toy import ToyWorld, generate

    d = cfg.data
    if d.height != d.width:
        raise ConfigError(f"the shapes world has square frames; got data.height {d.height} != data.width {d.width}")
    world = ToyWorld(size=d.height, frames=d.num_frames, size_range=tuple(d.toy_object_size))
    wanted = {"images": (images, d.toy_images), "videos": (videos, d.toy_videos),
              "captioned_videos": (captioned, d.toy_captioned_videos)}
    out = {}
    for kind, (use, n) in wanted.items():
        if not use:
            out[kind] = None
            continue
        need = max(1, world_size)  # one sample per rank and epoch at least
        if n < need:
            ranks = f" on {world_size} ranks" if world_size > 1 else ""
            raise ConfigError(f"data.toy_{kind} must be >= {need} for this recipe{ranks}, got {n}")
        # The permutation seed seed * 1000 is the one single-process runs have always walked, so their
        # streams (and the quickstart's figures) are unchanged by the rank split.
        out[kind] = generate(kind, n, seed=cfg.seed, world=world).stream(seed=cfg.seed * 1000, rank=rank,
                                                                         world_size=world_size)
    return out


def _source_streams(cfg: Config, rank: int, world_size: int, images: bool, videos: bool, captioned: bool) -> dict:
    """Every source read by ``data.num_workers`` processes and resumable by position: finite ones indexed
    once per run (:mod:`tft2v.data.index`) and read by their sampler, with ``data.buckets`` as
    micro-batches in buckets; streamed (remote, ``pipe:``, compressed) tar shards epoch by epoch."""
    from tft2v.data.bucketed import BucketedSource
    from tft2v.data.index import shared_index
    from tft2v.data.sources import ListSource, SourceStream, build_source
    from tft2v.data.sources_webdataset import ShardStream, is_streamed_spec

    d = cfg.data
    specs = {"images": (images, d.images, "image"), "videos": (videos, d.videos, "video"),
             "captioned_videos": (captioned, d.captioned_videos or d.videos, "video")}
    out = {}
    for salt, (name, (use, spec, kind)) in enumerate(specs.items()):
        if not use:
            out[name] = None
            continue
        if not spec:
            raise ConfigError(f"this recipe needs data.{name} (a folder, manifest, list or tar shards)")
        kw = dict(kind=kind, num_frames=d.num_frames, fps=d.fps, size=(d.height, d.width), seed=cfg.seed,
                  rank=rank, world_size=world_size)
        if is_streamed_spec(spec):
            if d.buckets:
                raise ConfigError(f"data.buckets need an indexed source; data.{name} {spec} is streamed (a URL, "
                                  "pipe: or compressed shards): use local .tar shards, a folder or a manifest")
            out[name] = ShardStream(build_source(spec, **kw), d.num_workers, d.prefetch_factor, d.worker_start)
            continue
        source = ListSource([], **kw)
        index = shared_index(spec, kind, d.data_dir or None, bool(d.buckets), d.index_cache or None, source.stats)
        source.items = index.items
        if d.buckets:
            source = BucketedSource(source, index, d.buckets, name, salt)
        out[name] = SourceStream(source, d.num_workers, d.prefetch_factor, d.worker_start)
    return out


def build_encoder_from_config(cfg: Config):
    """The frozen text/image encoder."""
    from tft2v.encoders import build_encoder

    return build_encoder(cfg.encoder.kind, **cfg.encoder.args)


def build_autoencoder_from_config(cfg: Config):
    """Pixel space ('none') or a local AutoencoderKL folder ('kl')."""
    from tft2v.autoencoder import build_autoencoder

    return build_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path or None, cfg.autoencoder.patch_size)


def build_unet(cfg: Config, encoder, autoencoder):
    """A TFT2VUNet from ``model.unet`` kwargs, initialised from scratch, SD-2.1 or a VGen checkpoint.

    Channel counts and context widths default to what the encoder and autoencoder produce.
    """
    from tft2v.models import TFT2VUNet

    kwargs = dict(cfg.model.unet)
    known = set(inspect.signature(TFT2VUNet.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"unknown config key 'model.unet.{unknown[0]}'; TFT2VUNet takes {sorted(known)}")
    channels = autoencoder.latent_channels
    kwargs.setdefault("in_channels", channels)
    kwargs.setdefault("out_channels", channels)
    kwargs.setdefault("context_dim", encoder.text_dim)
    kwargs.setdefault("image_embed_dim", encoder.image_dim)
    if cfg.recipe.conditions:
        kwargs.setdefault("conditions", tuple(cfg.recipe.conditions))
    for key in ("channel_mult", "attention_scales", "conditions", "condition_pixel_size"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    _check_model_matches(cfg, kwargs, encoder, channels)
    if cfg.model.init == "scratch":
        return TFT2VUNet(**kwargs)
    from tft2v.convert import infer_vgen_config, inflate_sd21, load_state_dict_file, load_vgen_unet

    if cfg.model.init == "sd21":
        return inflate_sd21(cfg.model.init_path, **kwargs)
    if cfg.model.init == "pretrained":
        unet = _load_pretrained(cfg.model.init_path, kwargs)
        if cfg.distill.learns_guidance:  # a distillation student that learns w starts as its teacher + embedding
            unet.add_guidance_embedding()
        return unet
    vgen_config = dict(cfg.model.vgen_config) or infer_vgen_config(load_state_dict_file(cfg.model.init_path))
    return load_vgen_unet(cfg.model.init_path, vgen_config)


def pretrained_unet_dir(path: str | Path) -> Path:
    """The UNet folder of a ``model.init: pretrained`` path: a model or checkpoint folder's ``unet/``, or
    the path itself (a UNet folder)."""
    folder = Path(path)
    return folder / "unet" if (folder / "unet" / "config.json").is_file() else folder


# UNet options that change no weight: ``model.unet`` may set them over a pretrained folder's config (a T2V
# folder starts a refinement stage with VGen's SR600 resampling).
LAYOUT_OPTIONS = ("refiner_layout",)


def changes_pretrained_layout(path: str, unet) -> bool:
    """Whether ``unet`` (built from the pretrained folder at ``path``) switched one of its :data:`LAYOUT_OPTIONS`
    or added layers (``ADDED_LAYER_OPTIONS``), so that the folder alone no longer describes it."""
    from tft2v.models.unet import ADDED_LAYER_OPTIONS

    saved = json.loads((pretrained_unet_dir(path) / "config.json").read_text())
    return any(saved.get(k, False) != unet.config[k] for k in (*LAYOUT_OPTIONS, *ADDED_LAYER_OPTIONS))


def _load_pretrained(path: str, kwargs: dict):
    """A TFT2VUNet saved by us: a model folder (its ``unet/``), a checkpoint folder or a UNet folder.
    Its saved config wins, except for :data:`LAYOUT_OPTIONS` and an added-layer option (ADDED_LAYER_OPTIONS)
    switched on here, which the model takes on as a no-op; any other ``model.unet`` value that contradicts it is
    an error naming the key."""
    from tft2v.models import TFT2VUNet
    from tft2v.models.unet import ADDED_LAYER_OPTIONS

    folder = pretrained_unet_dir(path)
    if not (folder / "config.json").is_file():
        why = " (it holds a LoRA adapter only: start from its base)" if (Path(path) / "lora").is_dir() else ""
        raise TFT2VError(f"model.init_path {path}: no TFT2VUNet found (expected config.json or unet/config.json){why}")
    layout = {k: kwargs[k] for k in LAYOUT_OPTIONS if k in kwargs}
    unet = TFT2VUNet.from_pretrained(folder, **layout)
    added = {k: True for k in ADDED_LAYER_OPTIONS if kwargs.get(k) is True and not unet.config[k]}
    if added:
        unet = unet.with_options(**added)
    if kwargs.get("conditions") and not unet.config.conditions:
        unet = add_conditions(unet, {k: kwargs[k] for k in CONDITION_KEYS if k in kwargs})
    for key, value in kwargs.items():
        saved = unet.config[key]
        if (tuple(saved) if isinstance(saved, list) else saved) != value:
            raise ConfigError(f"model.unet.{key}={value!r} contradicts the pretrained model's {saved!r} ({folder})")
    return unet


# The UNet settings a compositional stage may add to a model trained without conditions.
CONDITION_KEYS = ("conditions", "condition_channels", "condition_pixel_size", "condition_dropout",
                  "condition_encoder_dropout", "condition_p_all_zero", "condition_p_all_keep")


def add_conditions(unet, settings: dict):
    """``unet`` (trained without conditions) grown by condition encoders: VideoComposer starts its
    compositional model from a text-to-video one. The first conv's new condition channels are zero, so
    the grown model computes exactly what ``unet`` did until training moves them; ``settings`` holds
    :data:`CONDITION_KEYS` values."""
    from tft2v.models import TFT2VUNet

    # Not from_config: it resets the keys the saved model left at their defaults (its _use_default_values).
    kwargs = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    grown = TFT2VUNet(**{**kwargs, **settings})
    state = unet.state_dict()
    conv = "input_blocks.0.0.weight"
    # (C, in + its unused condition channels, 3, 3): keep the latent's channels, zeros for the new conditions.
    old = state[conv][:, :unet.config.in_channels]
    state[conv] = torch.cat([old, old.new_zeros(old.shape[0], grown.config.condition_channels, *old.shape[2:])], 1)
    missing, unexpected = grown.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith("condition_encoders.")] + list(unexpected)
    if stray:
        raise TFT2VError(f"cannot add conditions to this model: key {stray[0]!r} does not carry over")
    return grown


def _check_model_matches(cfg: Config, kwargs: dict, encoder, channels: int) -> None:
    if kwargs["in_channels"] != channels:
        raise ConfigError(f"model.unet.in_channels {kwargs['in_channels']} != the autoencoder's {channels} latent channels")
    if kwargs["context_dim"] != encoder.text_dim:
        raise ConfigError(f"model.unet.context_dim {kwargs['context_dim']} != the encoder's text_dim {encoder.text_dim}")
    r = cfg.recipe
    if (r.image_tokens_on_images or r.image_tokens_on_videos) and not kwargs.get("image_embed_dim"):
        raise ConfigError("recipe asks for image tokens but the model has no image_embed_dim "
                          "(set recipe.image_tokens_on_videos=false or use an encoder with an image tower)")
    missing = sorted(set(r.conditions) - set(kwargs.get("conditions", ())))
    if missing:
        raise ConfigError(f"recipe.conditions {missing} are not in model.unet.conditions")


def check_geometry(cfg: Config, unet, autoencoder) -> None:
    """Every training geometry (data.height × data.width, each bucket) is one the UNet can take."""
    from tft2v.pipeline_inputs import unet_stride

    stride = unet_stride(unet, autoencoder)
    d = cfg.data
    named = [("data.height x data.width", d.height, d.width)]
    named += [(f"data.buckets[{i}] {b.name}", b.height, b.width) for i, b in enumerate(d.buckets)]
    factor = autoencoder.spatial_factor
    for what, h, w in named:
        if unet.config.get("refiner_layout") and not (h % factor or w % factor):
            try:  # SR600's (2, 1)-padded downsamples take heights of their own rule (720p: 90 latent rows)
                unet.check_latent_size(h // factor, w // factor)
                continue
            except ValueError as e:
                raise ConfigError(f"{what} {h}x{w}: {e}") from None
        if h % stride or w % stride:
            raise ConfigError(f"{what}: height and width must be multiples of {stride} for this model "
                              f"(autoencoder factor {autoencoder.spatial_factor} x UNet downsampling), got {h}x{w}")


def check_data_paths(cfg: Config) -> None:
    """Fail early, in one line, on a data path that does not exist (before any model is built)."""
    if cfg.data.kind != "sources" or cfg.data.cache:  # a cache replaces the sources
        return
    for name in ("images", "videos", "captioned_videos"):
        spec = getattr(cfg.data, name)
        local = spec and "://" not in spec and "{" not in spec and not spec.startswith("pipe:")
        if local and not Path(spec).exists():
            raise TFT2VError(f"data.{name}: path not found: {spec}")
