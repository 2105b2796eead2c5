"""Checkpoint conversion: VGen TF-T2V UNets and Stable Diffusion 2.1 UNets → :class:`TFT2VUNet`.

VGen keys already follow our module layout except for the spellings VGen shipped
(``temopral_conv``) and the condition-encoder module names; SD-2.1 (LDM or diffusers layout) keys are
mapped onto the spatial part, and the temporal layers keep their identity initialisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from tft2v.errors import CheckpointError, ConfigError
from tft2v.models.unet import TFT2VUNet

# VGen composition name → (our condition name, VGen conv-stack prefix, VGen after-transformer prefix).
VGEN_CONDITIONS = {
    "depthmap": ("depth", "depth_embedding", "depth_embedding_after"),
    "sketch": ("sketch", "sketch_embedding", "sketch_embedding_after"),
    "motion": ("motion", "motion_embedding", "motion_embedding_after"),
    "mask": ("masked", "masked_embedding", "mask_embedding_after"),
    "local_image": ("local_image", "local_image_embedding", "local_image_embedding_after"),
    "single_sketch": ("single_sketch", "single_sketch_embedding", "single_sketch_embedding_after"),
}
# VGen key → ours inside a condition encoder's temporal "after" transformer.
VGEN_AFTER_KEYS = {
    "layers.0.0.norm": "temporal.norm",
    "layers.0.0.fn.to_qkv": "temporal.attn.to_qkv",
    "layers.0.0.fn.to_out.0": "temporal.attn.to_out.0",
    "layers.0.1.net.0.0": "temporal.ff.0",
    "layers.0.1.net.2": "temporal.ff.3",
}
# VGen constructor arguments that do not change the network we build (facts §4, vectors README).
_VGEN_NO_EFFECT = {
    "y_dim", "temporal_attn_times", "use_checkpoint", "use_sim_mask", "training", "inpainting",
    "zero_y", "config", "upper_len", "default_fps", "hist_dim", "use_scale_shift_norm", "use_lcm",
}
# VGen UNet classes (a yaml's ``type``) and what they change: the 720p refiner has no condition channels,
# no image tokens, and its own resampling and decoder tweaks (TFT2VUNet ``refiner_layout``).
# VideoLCM (facts §4.1) is the TF-T2V layout; its guidance embedding ``time_embed_w`` is commented out in VGen, so
# the released checkpoint has none, and one that has the keys gets TFT2VUNet's (``guidance_embed``).
VGEN_TYPES = ("UNetSD_TFT2V", "UNetSD_SR600", "UNetSD_VideoLCM")
VIDEOLCM_GUIDANCE_KEY = "time_embed_w.0.weight"
_VGEN_FIXED = {"temporal_attention": True, "use_fps_condition": False, "adapter_transformer_layers": 1,
               "use_image_dataset": False}


def vgen_config_to_unet_kwargs(config: Mapping) -> dict:
    """Translate VGen ``UNetSD_TFT2V`` (or, with ``type: UNetSD_SR600``, the refiner's) constructor arguments
    into :class:`TFT2VUNet` config."""
    known = {"in_dim", "dim", "context_dim", "out_dim", "dim_mult", "num_heads", "head_dim", "num_res_blocks",
             "attn_scales", "dropout", "num_tokens", "video_compositions", "resolution", "concat_dim",
             "misc_dropout", "p_all_zero", "p_all_keep", "type"} | _VGEN_NO_EFFECT | set(_VGEN_FIXED)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"unknown VGen UNet config key(s): {', '.join(unknown)}")
    kind = config.get("type", "UNetSD_TFT2V")
    if kind not in VGEN_TYPES:
        raise ConfigError(f"VGen UNet type {kind!r} is not supported; known: {list(VGEN_TYPES)}")
    for key, value in _VGEN_FIXED.items():
        if key in config and config[key] != value:
            raise ConfigError(f"VGen config {key}={config[key]!r} is not supported (TF-T2V uses {value!r})")
    backbone = dict(
        in_channels=config.get("in_dim", 4),
        out_channels=config.get("out_dim", 4),
        model_channels=config.get("dim", 320),
        channel_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=config.get("num_res_blocks", 2),
        attention_scales=tuple(float(s) for s in config.get("attn_scales", (1.0, 0.5, 0.25))),
        head_dim=config.get("head_dim", 64),
        init_temporal_heads=config.get("num_heads", 8),
        context_dim=config.get("context_dim", 1024),
        dropout=config.get("dropout", 0.1),
    )
    if kind == "UNetSD_SR600":
        # The refiner: the latent straight into the first conv, text tokens only, its own resampling and
        # decoder tweaks.
        extra = sorted(set(config) & {"num_tokens", "video_compositions", "resolution", "concat_dim", "misc_dropout",
                                      "p_all_zero", "p_all_keep"})
        if extra:
            raise ConfigError(f"VGen UNetSD_SR600 takes no {', '.join(extra)}")
        return {**backbone, "image_embed_dim": None, "condition_channels": 0, "refiner_layout": True}
    compositions = list(config.get("video_compositions", ["text", "image"]))
    bad = sorted(set(compositions) - set(VGEN_CONDITIONS) - {"text", "image"})
    if bad:
        raise ConfigError(f"unsupported VGen video_compositions {bad}")
    width, height = config.get("resolution", [448, 256])  # VGen stores [W, H]
    return dict(
        **backbone,
        image_embed_dim=config.get("context_dim", 1024) if "image" in compositions else None,
        num_image_tokens=config.get("num_tokens", 4),
        conditions=tuple(VGEN_CONDITIONS[c][0] for c in compositions if c in VGEN_CONDITIONS),
        condition_channels=config.get("concat_dim", 8),
        condition_pixel_size=(int(height), int(width)),
        condition_dropout=config.get("misc_dropout", 0.4),
        condition_p_all_zero=config.get("p_all_zero", 0.1),
        condition_p_all_keep=config.get("p_all_keep", 0.1),
    )


def load_state_dict_file(src: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``); unwrap
    ``{'state_dict': ...}`` containers and a DDP ``module.`` prefix."""
    path = Path(src)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return unwrap_state_dict(sd, str(path))


def unwrap_state_dict(sd, name: str = "state dict") -> dict[str, torch.Tensor]:
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{name} is not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def vgen_key_to_ours(key: str) -> str:
    """Rename one VGen UNet key into :class:`TFT2VUNet`'s namespace."""
    key = key.replace(".temopral_conv.", ".temporal_conv.")
    for ours, prefix, after in VGEN_CONDITIONS.values():
        if key.startswith(after + "."):
            rest = key[len(after) + 1:]
            for src, dst in VGEN_AFTER_KEYS.items():
                if rest.startswith(src + "."):
                    return f"condition_encoders.{ours}.{dst}{rest[len(src):]}"
            return key
        if key.startswith(prefix + "."):
            return f"condition_encoders.{ours}.spatial.{key[len(prefix) + 1:]}"
    return key


def load_into(model: TFT2VUNet, sd: Mapping[str, torch.Tensor], what: str) -> TFT2VUNet:
    """Strictly load ``sd`` (our key names) into ``model``; any difference is a one-line error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{what} does not match the model config: " + "; ".join(parts))
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{what}: key {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)
    return model


def load_vgen_unet(src: str | Path | Mapping, config: Mapping) -> TFT2VUNet:
    """Build a :class:`TFT2VUNet` from VGen constructor ``config`` and load VGen weights ``src``
    (a ``.pth``/``.safetensors`` path, raw or ``{'state_dict': ...}``, or a state-dict mapping)."""
    sd = load_state_dict_file(src) if isinstance(src, (str, Path)) else unwrap_state_dict(src)
    kwargs = vgen_config_to_unet_kwargs(config)
    if VIDEOLCM_GUIDANCE_KEY in sd:
        if config.get("type") != "UNetSD_VideoLCM":
            raise ConfigError(f"the checkpoint has a guidance embedding ({VIDEOLCM_GUIDANCE_KEY}): it is a VideoLCM "
                              f"UNet, set type: UNetSD_VideoLCM")
        kwargs["guidance_embed"] = True
    model = TFT2VUNet(**kwargs)
    what = f"VGen checkpoint {src}" if isinstance(src, (str, Path)) else "VGen state dict"
    return load_into(model, {vgen_key_to_ours(k): v for k, v in sd.items()}, what).eval()


def _ldm_geometry(sd: Mapping[str, torch.Tensor]) -> tuple[int, int, list[int], list[float]]:
    """(model_channels, num_res_blocks, channel_mult, attention_scales) of an LDM-layout UNet (VGen's
    and SD's share it) from its key names and shapes; raises KeyError for a missing key."""
    dim = sd["input_blocks.0.0.weight"].shape[0]
    num_res_blocks = 1
    while f"input_blocks.{1 + num_res_blocks}.0.in_layers.2.weight" in sd:
        num_res_blocks += 1
    dim_mult, scales, n = [], [], 1
    while f"input_blocks.{n}.0.in_layers.2.weight" in sd:
        level = len(dim_mult)
        width = sd[f"input_blocks.{n}.0.in_layers.2.weight"].shape[0]
        if width % dim:
            raise CheckpointError(f"level {level} of the UNet is {width} channels wide, not a multiple of "
                                  f"its first conv's {dim}")
        dim_mult.append(width // dim)
        if f"input_blocks.{n}.1.norm.weight" in sd:
            scales.append(1.0 / 2**level)
        n += num_res_blocks + 1  # the level's res blocks, then its downsample
    if not dim_mult:
        raise KeyError("input_blocks.1.0.in_layers.2.weight")
    return dim, num_res_blocks, dim_mult, scales


def infer_vgen_config(sd: Mapping[str, torch.Tensor], head_dim: int = 64,
                      resolution: tuple[int, int] = (448, 256)) -> dict:
    """VGen constructor arguments recovered from a checkpoint's key shapes. Head width and the
    condition resolution ([W, H]) leave no trace in the shapes, so they are arguments."""
    sd = unwrap_state_dict(sd)
    try:
        dim, num_res_blocks, dim_mult, scales = _ldm_geometry(sd)
        if sd["input_blocks.0.0.weight"].shape[1] == sd["out.2.weight"].shape[0] \
                and "pre_image_condition.0.weight" not in sd:
            # No condition channels beside the latent and no image tokens: the 720p refiner (SR600).
            return {"type": "UNetSD_SR600", "in_dim": sd["input_blocks.0.0.weight"].shape[1], "dim": dim,
                    "out_dim": sd["out.2.weight"].shape[0],
                    "context_dim": sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
                    "dim_mult": dim_mult, "num_res_blocks": num_res_blocks, "attn_scales": scales,
                    "head_dim": head_dim, "num_heads": sd["input_blocks.0.1.proj_in.weight"].shape[0] // head_dim}
        compositions = ["text"] + (["image"] if "pre_image_condition.0.weight" in sd else [])
        # VideoLCM's key set is TF-T2V's; only a guidance embedding, where one was trained, tells it apart.
        lcm = {"type": "UNetSD_VideoLCM"} if VIDEOLCM_GUIDANCE_KEY in sd else {}
        compositions += [c for c, (_, prefix, _) in VGEN_CONDITIONS.items() if f"{prefix}.0.weight" in sd]
        config = {
            "in_dim": sd["input_blocks.0.0.weight"].shape[1] - 8,
            "dim": dim,
            "out_dim": sd["out.2.weight"].shape[0],
            "context_dim": sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
            "dim_mult": dim_mult,
            "num_res_blocks": num_res_blocks,
            "attn_scales": scales,
            "head_dim": head_dim,
            "num_heads": sd["input_blocks.0.1.proj_in.weight"].shape[0] // head_dim,
            "video_compositions": compositions,
            "resolution": list(resolution),
            **lcm,
        }
        if "pre_image_condition.2.weight" in sd:
            w = sd["pre_image_condition.2.weight"]
            config["num_tokens"] = w.shape[0] // w.shape[1]
        return config
    except KeyError as e:
        raise CheckpointError(f"not a VGen TF-T2V UNet state dict: key {e.args[0]} is missing") from None


# -- Stable Diffusion 2.1 ------------------------------------------------------------------------

def diffusers_unet2d_to_ldm(sd: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict into LDM (``input_blocks``…) naming."""
    per = layers_per_block
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in sd.items():
        new = None
        for src, dst in fixed.items():
            if key.startswith(src + "."):
                new = dst + key[len(src):]
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if m:
            side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            idx = 1 + i * (per + 1) + j if side == "down" else i * (per + 1) + j
            blocks = "input_blocks" if side == "down" else "output_blocks"
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"{blocks}.{idx}.0.{resnet[name]}.{tail}"
            else:
                new = f"{blocks}.{idx}.1.{rest}"
        m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
        if m:
            new = f"input_blocks.{(int(m.group(1)) + 1) * (per + 1)}.0.op.{m.group(2)}"
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)
        if m:
            i = int(m.group(1))
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
            new = f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}.conv.{m.group(2)}"
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if m:
            kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"middle_block.{2 * j}.{resnet[name]}.{tail}"
            else:
                new = f"middle_block.1.{rest}"
        if new is None:
            raise CheckpointError(f"unrecognised diffusers UNet key {key}")
        out[new] = value
    return out


def ldm_key_to_ours(key: str) -> str:
    """LDM SD-2.1 UNet key → our key: unwrap Downsample, and shift past the inserted temporal layers
    (SD ``middle_block.2`` → ``middle_block.3``; upsample convs after ResBlock+ST+TT → index 3)."""
    key = re.sub(r"^input_blocks\.(\d+)\.0\.op\.", r"input_blocks.\1.op.", key)
    key = re.sub(r"^middle_block\.2\.", "middle_block.3.", key)
    return re.sub(r"^output_blocks\.(\d+)\.2\.conv\.", r"output_blocks.\1.3.conv.", key)


def _new_module_prefixes(model: TFT2VUNet) -> tuple[str, ...]:
    """Parameters SD 2.1 does not have: temporal layers, the image-token MLP, condition encoders."""
    from tft2v.models.blocks import TemporalConvBlock, TemporalTransformer

    prefixes = [n + "." for n, m in model.named_modules() if isinstance(m, (TemporalConvBlock, TemporalTransformer))]
    return tuple(prefixes + ["pre_image_condition.", "condition_encoders."])


# SD 2.1's attention head width and GroupNorm groups: the shapes cannot tell them, a diffusers config can.
SD21_UNSEEN = {"head_dim": 64, "norm_num_groups": 32}


def infer_sd_unet_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """:class:`TFT2VUNet` geometry of an LDM-named Stable Diffusion UNet from its tensor shapes: channels,
    levels, res blocks, attention levels, context width (head width and GroupNorm groups leave no trace
    in the shapes, see ``SD21_UNSEEN``)."""
    deep = sorted({m[1] for k in sd if (m := re.match(r"(.*\.transformer_blocks)\.[1-9]", k))})
    if deep:
        raise CheckpointError(f"{deep[0]} holds more than one transformer block; TFT2VUNet has one per "
                              "spatial transformer, as SD 2.1")
    try:
        dim, num_res_blocks, dim_mult, scales = _ldm_geometry(sd)
        conv_in = sd["input_blocks.0.0.weight"]  # (C, in, 3, 3)
        return {
            "in_channels": conv_in.shape[1],
            "out_channels": sd["out.2.weight"].shape[0],
            "model_channels": dim,
            "channel_mult": tuple(dim_mult),
            "num_res_blocks": num_res_blocks,
            "attention_scales": tuple(scales),
            "context_dim": sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        }
    except KeyError as e:
        raise CheckpointError(f"not a Stable Diffusion UNet state dict: key {e.args[0]} is missing") from None
    except IndexError:
        raise CheckpointError("not a Stable Diffusion UNet state dict: a conv or attention weight has too few "
                              "dimensions") from None


def _read_sd21(src: str | Path | Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """SD UNet weights in LDM naming plus the config a diffusers folder states beyond the shapes."""
    if isinstance(src, Mapping):
        sd = unwrap_state_dict(src)
    else:
        path = Path(src)
        if path.is_dir():
            return _read_diffusers_unet(path / "unet" if (path / "unet").is_dir() else path)
        sd = load_state_dict_file(path)
    prefix = "model.diffusion_model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if "input_blocks.0.0.weight" not in sd:
        raise CheckpointError("not a Stable Diffusion UNet state dict (no input_blocks.0.0.weight)")
    return sd, {}


def _read_diffusers_unet(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from diffusers import UNet2DConditionModel

    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a diffusers UNet folder (no config.json)")
    unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
    c = unet.config
    widths = list(c.block_out_channels)
    # diffusers' attention_head_dim is the head count (its naming slip); the mid block uses the last one.
    heads = c.num_attention_heads or c.attention_head_dim
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(widths)
    levels = [i for i, t in enumerate(c.down_block_types) if "CrossAttn" in t] + [len(widths) - 1]
    head_dims = sorted({widths[i] // heads[i] for i in levels})
    if len(head_dims) > 1:
        raise CheckpointError(f"{folder} uses head widths {head_dims} across levels; TFT2VUNet needs one head_dim")
    return diffusers_unet2d_to_ldm(unet.state_dict(), c.layers_per_block), {
        "head_dim": head_dims[0], "norm_num_groups": c.norm_num_groups}


def _check_widths(kwargs: dict) -> None:
    """One-line errors for head widths / GroupNorm groups that do not divide the UNet's levels."""
    dim, groups, head_dim = kwargs["model_channels"], kwargs["norm_num_groups"], kwargs["head_dim"]
    for level, mult in enumerate(kwargs["channel_mult"]):
        width = dim * mult
        if width % groups:
            raise ConfigError(f"norm_num_groups {groups} does not divide the {width}-channel level {level}; "
                              "pass the source model's GroupNorm groups")
        if width % head_dim:
            raise ConfigError(f"head_dim {head_dim} does not divide the {width}-channel level {level}; "
                              "pass the source model's attention head width")


def _as_linear(key: str, value: torch.Tensor) -> torch.Tensor:
    """SD 1.x's spatial ``proj_in``/``proj_out`` are 1x1 convs; on flattened tokens the same map is a
    linear layer with the (C_out, C_in) kernel, so dropping the 1x1 axes is exact."""
    if re.search(r"\.1\.proj_(in|out)\.weight$", key) and value.ndim == 4 and value.shape[2:] == (1, 1):
        return value[:, :, 0, 0]
    return value


def inflate_sd21(src: str | Path | Mapping, **unet_kwargs) -> TFT2VUNet:
    """A video UNet whose spatial weights come from a Stable Diffusion UNet (LDM checkpoint, diffusers
    folder or state dict) and whose temporal layers are identity-initialised, so on a 1-frame input it
    computes exactly what the 2-D UNet computes. The geometry is read from the weights' shapes;
    ``unet_kwargs`` override it and give what shapes cannot tell (``head_dim``, ``norm_num_groups``; for
    an LDM file SD 2.1's by default). SD 1.x's 1x1-conv ``proj_in``/``proj_out`` load as linear layers.
    The extra condition channels of the first conv start at zero."""
    sd, stated = _read_sd21(src)
    kwargs = {**SD21_UNSEEN, **infer_sd_unet_config(sd), **stated, **unet_kwargs}
    _check_widths(kwargs)
    model = TFT2VUNet(**kwargs)
    new = _new_module_prefixes(model)
    state = model.state_dict()
    mapped = {ours: _as_linear(ours, v) for ours, v in ((ldm_key_to_ours(k), v) for k, v in sd.items())}
    conv_in, ours = mapped.get("input_blocks.0.0.weight"), state["input_blocks.0.0.weight"]
    # Pad only a first conv that fits apart from the missing condition channels; any other shape is
    # left for load_into to report.
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] < ours.shape[1] \
            and (conv_in.shape[0], *conv_in.shape[2:]) == (ours.shape[0], *ours.shape[2:]):
        padded = torch.zeros_like(ours)
        padded[:, : conv_in.shape[1]] = conv_in
        mapped["input_blocks.0.0.weight"] = padded
    kept = {k: v for k, v in state.items() if k.startswith(new)}
    return load_into(model, {**kept, **mapped}, "Stable Diffusion UNet").eval()
