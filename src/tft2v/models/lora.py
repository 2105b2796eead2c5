"""LoRA adapters on :class:`TFT2VUNet` through ``peft`` (issue #15).

Adapters are injected in place (``peft.inject_adapter_in_model``): the UNet keeps its class, so its
block dispatch is unchanged; only leaf Linear / Conv layers become peft LoRA layers. Target groups:

* ``spatial`` — q/k/v/out projections of the spatial transformers (content branch);
* ``spatial_conv`` — additionally the 3×3 convolutions of the ResBlocks;
* ``text_kv`` — keys/values of the spatial transformers' text cross-attention only (a new caption word);
* ``attn2_kv`` — ``text_kv`` plus the keys/values of every temporal transformer's second attention
  (over frames; on a one-frame image its value projection is a per-pixel channel map): the appearance
  adapter of ``benchmarks/lora_demo.py``, which keeps ordinary prompts intact where ``text_kv`` does not
  (docs/research/lora_demo.md, "Rerun with the named `attn2_kv` group and high-noise motion training");
* ``temporal`` — q/k/v/out projections of the temporal transformers and the (3,1,1) temporal convs
  (motion branch). A temporal conv on a one-frame clip uses its centre tap of the base weight only.
* anything else — a regular expression matched (``re.fullmatch``) against module names.

Files (:func:`save_adapter`): ``pytorch_lora_weights.safetensors`` in the diffusers/peft layout
(``unet.<module>.lora_A.weight`` / ``lora_B.weight``) and ``tft2v_lora.json`` (rank, alpha, the
module names, and the base model's fingerprint, :func:`base_fingerprint`; ``encoder_words``: new caption
words the adapter was trained with, which loading it adds to the toy text encoder — ``tft2v finetune
--add-word``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from tft2v.config import LORA_TARGET_GROUPS
from tft2v.errors import TFT2VError

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
META_NAME = "tft2v_lora.json"
DEFAULT_ADAPTER = "default"


class LoraError(TFT2VError):
    pass


def _parent_types(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """module name → class names of its ancestors (outermost first)."""
    from tft2v.models.blocks import ResBlock, SpatialTransformer, TemporalConvBlock, TemporalTransformer

    kinds = (ResBlock, SpatialTransformer, TemporalConvBlock, TemporalTransformer)
    out: dict[str, tuple[str, ...]] = {}
    owners: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            owners[name] = type(module).__name__
    for name, _ in model.named_modules():
        out[name] = tuple(kind for prefix, kind in owners.items() if name.startswith(prefix + "."))
    return out


def target_modules(model: nn.Module, targets) -> list[str]:
    """Module names of ``model`` the ``targets`` (groups and/or regular expressions) select."""
    for t in targets:
        if t not in LORA_TARGET_GROUPS:
            try:
                re.compile(t)
            except re.error as e:
                raise LoraError(f"LoRA target {t!r} is neither a group {list(LORA_TARGET_GROUPS)} nor a module-name "
                                f"regular expression ({e})") from None
    parents = _parent_types(model)
    chosen: list[str] = []
    for name, module in model.named_modules():
        if "lora_" in name or "base_layer" in name:
            continue
        kinds = parents.get(name, ())
        attn_proj = isinstance(module, nn.Linear) and re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name)
        spatial_attn = bool(attn_proj) and "SpatialTransformer" in kinds
        attn2_kv = bool(attn_proj) and name.endswith(("attn2.to_k", "attn2.to_v"))
        hit = False
        for t in targets:
            if t == "spatial":
                hit |= spatial_attn
            elif t == "spatial_conv":
                hit |= spatial_attn
                hit |= (isinstance(module, nn.Conv2d) and "ResBlock" in kinds
                        and bool(re.search(r"(in_layers\.2|out_layers\.3)$", name)))
            elif t == "text_kv":
                hit |= spatial_attn and attn2_kv
            elif t == "attn2_kv":
                hit |= attn2_kv
            elif t == "temporal":
                hit |= bool(attn_proj) and "TemporalTransformer" in kinds
                hit |= isinstance(module, nn.Conv3d) and "TemporalConvBlock" in kinds
            else:
                hit |= (isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d))
                        and re.fullmatch(t, name) is not None)
        if hit:
            chosen.append(name)
    if not chosen:
        raise LoraError(f"LoRA targets {list(targets)} select no module of this UNet")
    return chosen


def _peft_config(rank: int, alpha: float, dropout: float, modules: list[str]):
    from peft import LoraConfig as PeftLoraConfig

    # Exact names: peft matches a list of strings by full name or name suffix, a bare string as a regex.
    return PeftLoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=list(modules),
                          bias="none")


def lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def add_adapter(model: nn.Module, rank: int, alpha: float = 0.0, dropout: float = 0.0, targets=("temporal",),
                adapter_name: str = DEFAULT_ADAPTER, modules: list[str] | None = None) -> list[str]:
    """Inject one LoRA adapter into ``model`` in place (lora_B zero: the output is unchanged); returns
    the module names. Does not touch ``requires_grad`` of the base."""
    from peft import inject_adapter_in_model

    modules = modules or target_modules(model, targets)
    inject_adapter_in_model(_peft_config(rank, alpha, dropout, modules), model, adapter_name=adapter_name)
    model._tft2v_lora = {**getattr(model, "_tft2v_lora", {}),
                         adapter_name: {"rank": rank, "alpha": alpha or rank, "modules": modules}}
    return modules


def _plain_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """state_dict hook of a training UNet: the base weights under their plain names, adapters left out —
    so gathering a LoRA run's weights (validation under FSDP, the export of a base that has no folder of its
    own) gives the unchanged base model. The adapters are saved on their own (``lora/``)."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        if "lora_" in key:
            del state_dict[key]
        elif ".base_layer." in key:
            state_dict[key.replace(".base_layer.", ".")] = state_dict.pop(key)


def apply_lora(lora_cfg, unet: nn.Module) -> list[str] | None:
    """Trainer hook (``model.lora``): with ``rank > 0`` inject the adapter, freeze every base weight and
    leave only the adapter weights trainable (so only they reach the optimizer, the EMA and
    :func:`save_adapter`); the UNet's ``state_dict()`` then holds the base only (:func:`_plain_state_dict`).
    Returns the adapted module names, or None when LoRA is off."""
    if lora_cfg is None or not lora_cfg.rank:
        return None
    unet._tft2v_lora_base = base_fingerprint(unet)  # of the base as trained on, for the adapter files
    modules = add_adapter(unet, lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout, lora_cfg.targets)
    unet._register_state_dict_hook(_plain_state_dict)
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
    return modules


# -- fingerprint, files ------------------------------------------------------------------------------

def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under their plain names (peft's ``base_layer.`` removed, adapters left out)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}


def base_fingerprint(model: nn.Module) -> dict:
    """What identifies the base UNet: ``fingerprint`` = sha256 over its config and every base weight's
    name and shape; ``sample`` = 4 values from each of 16 weights spread over the model (compared with a
    tolerance, so a float16/bfloat16 copy of the same model matches). Take it before fusing an adapter."""
    h = hashlib.sha256()
    config = dict(getattr(model, "config", {}) or {})
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = sorted(_base_state(model).items())
    for name, t in state:
        h.update(f"{name}:{tuple(t.shape)};".encode())
    step = max(1, len(state) // 16)
    sample = []
    for _, t in state[::step][:16]:
        sample += t.detach().float().cpu().reshape(-1)[:4].tolist()
    return {"fingerprint": h.hexdigest()[:32], "sample": [round(v, 6) for v in sample]}


def same_base(a: dict, b: dict) -> bool:
    if a.get("fingerprint") != b.get("fingerprint") or len(a.get("sample", ())) != len(b.get("sample", ())):
        return False
    x, y = torch.tensor(a["sample"]), torch.tensor(b["sample"])
    return bool(((x - y).abs() <= 1e-2 * (1 + y.abs())).all())


def adapter_state(model: nn.Module, adapter_name: str = DEFAULT_ADAPTER, values: dict | None = None,
                  to_host: bool = True) -> dict[str, torch.Tensor]:
    """The adapter's weights in the diffusers layout: ``unet.<module>.lora_A.weight`` … ``values``:
    tensors to take instead of the parameters of those names (e.g. an EMA's shadows). Under FSDP2 the
    shards are gathered (``DTensor.full_tensor``): collective there, every rank must call it; ranks that
    only take part pass ``to_host=False`` and get the gathered tensors where they are."""
    marker = f".{adapter_name}."
    values = values or {}
    out = {}
    for k, v in model.named_parameters():  # not state_dict(): a training UNet's leaves the adapters out
        if "lora_" in k and marker in k:
            v = values.get(k, v)
            full = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach()
            out["unet." + k.replace(marker, ".")] = full.to("cpu", copy=True).contiguous() if to_host else full
    return out


def save_adapter(model: nn.Module, directory: str | Path, adapter_name: str = DEFAULT_ADAPTER,
                 weights: dict[str, torch.Tensor] | None = None, fingerprint: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` + ``tft2v_lora.json``. ``weights``: the
    adapter in :func:`adapter_state`'s layout to write instead of the live weights (e.g. the EMA's)."""
    import safetensors.torch

    info = getattr(model, "_tft2v_lora", {}).get(adapter_name)
    if info is None:
        raise LoraError(f"the model has no LoRA adapter {adapter_name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = adapter_state(model, adapter_name) if weights is None else weights
    safetensors.torch.save_file(weights, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    meta = {"format": "tft2v-lora/1", "rank": info["rank"], "alpha": info["alpha"], "modules": info["modules"],
            "base": fingerprint or getattr(model, "_tft2v_lora_base", None) or base_fingerprint(model),
            **(extra or {})}
    (directory / META_NAME).write_text(json.dumps(meta, indent=2))
    return directory


def update_meta(directory: str | Path, **fields) -> dict:
    """Add/replace ``fields`` in an adapter folder's ``tft2v_lora.json``; returns the new metadata."""
    meta, _ = read_adapter(directory)
    meta.update(fields)
    (Path(directory) / META_NAME).write_text(json.dumps(meta, indent=2))
    return meta


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    import safetensors.torch

    path = Path(path)
    if path.is_file():
        path = path.parent
    meta_file, weights_file = path / META_NAME, path / WEIGHTS_NAME
    if not meta_file.is_file() or not weights_file.is_file():
        raise LoraError(f"{path} is not a tft2v LoRA adapter folder (needs {META_NAME} and {WEIGHTS_NAME})")
    return json.loads(meta_file.read_text()), safetensors.torch.load_file(weights_file)


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str = DEFAULT_ADAPTER,
                 fingerprint: dict | None = None) -> dict:
    """Inject and fill adapter ``adapter_name`` from an adapter folder; refuse one made for another base
    model (fingerprint mismatch). Returns its metadata."""
    meta, weights = read_adapter(path)
    mine = fingerprint or base_fingerprint(model)
    if not same_base(meta.get("base", {}), mine):
        raise LoraError(f"LoRA adapter {path} was made for another base model "
                        f"(base {meta.get('base', {}).get('fingerprint')}, this model {mine['fingerprint']})")
    if adapter_name in getattr(model, "_tft2v_lora", {}):
        raise LoraError(f"adapter name {adapter_name!r} is already loaded")
    trainable = {k.replace(".base_layer", ""): p.requires_grad for k, p in model.named_parameters()}
    add_adapter(model, meta["rank"], meta["alpha"], modules=meta["modules"], adapter_name=adapter_name)
    for k, p in model.named_parameters():  # peft froze the base; give it back its own flags (see below)
        if "lora_" not in k:
            p.requires_grad_(trainable.get(k.replace(".base_layer", ""), p.requires_grad))
    fill_adapter(model, weights, adapter_name, path)
    _freeze_adapters(model)
    return meta


def fill_adapter(model: nn.Module, weights: dict[str, torch.Tensor], adapter_name: str, path) -> None:
    """Copy ``weights`` (:func:`adapter_state`'s layout) into the injected adapter ``adapter_name``."""
    own = dict(model.named_parameters())
    marker = f".{adapter_name}."
    with torch.no_grad():
        for k, v in weights.items():
            name = k[len("unet."):] if k.startswith("unet.") else k
            module, _, rest = name.rpartition(".lora_")  # rest: "A.weight"
            key = f"{module}.lora_{rest.replace('.', marker, 1)}"  # <module>.lora_A.<adapter>.weight
            if key not in own or own[key].shape != v.shape:
                raise LoraError(f"LoRA adapter {path}: weight {k} does not fit this model")
            own[key].copy_(v)


def copy_adapter(source: nn.Module, target: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Give ``target`` (a plain copy of ``source``'s base) ``source``'s training adapter, filled with
    ``weights`` (:func:`adapter_state`'s layout): a gathered FSDP2 copy samples with the adapter on."""
    info = source._tft2v_lora[DEFAULT_ADAPTER]
    with torch.random.fork_rng(devices=[]):  # peft's initialisation must not move training's RNG stream
        add_adapter(target, info["rank"], info["alpha"], modules=info["modules"])
    fill_adapter(target, weights, DEFAULT_ADAPTER, "the training run's adapter")


# -- mixing, fusing ----------------------------------------------------------------------------------

def set_adapters(model: nn.Module, names: list[str], weights: list[float] | None = None) -> None:
    """Activate ``names`` together, each scaled by its weight (default 1)."""
    known = getattr(model, "_tft2v_lora", {})
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise LoraError(f"set_adapters: {len(names)} names but {len(weights)} weights")
    missing = [n for n in names if n not in known]
    if missing:
        raise LoraError(f"unknown LoRA adapter(s) {missing}; loaded: {sorted(known)}")
    for layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.lora_A])
        for n, w in zip(names, weights):
            if n in layer.lora_A:
                layer.set_scale(n, float(w))
    _freeze_adapters(model)


def _freeze_adapters(model: nn.Module) -> None:
    """Loaded adapters are for sampling: no gradients. (peft's set_adapter turns them on.) The base's own
    ``requires_grad`` is left as it is — on CPU it changes which kernels run, so a scale-0 adapter would
    no longer match the untouched model bit for bit."""
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)


def fuse(model: nn.Module, names: list[str] | None = None) -> None:
    for layer in lora_layers(model):
        layer.merge(adapter_names=names)


def unfuse(model: nn.Module) -> None:
    for layer in lora_layers(model):
        while layer.merged:
            layer.unmerge()


def merge_into_plain(model: nn.Module) -> nn.Module:
    """Merge the active adapters into ``model``'s base weights and return a plain module of its class (no
    adapter layers) holding the merged weights: a full model that needs no adapter. ``model`` keeps the
    merged weights; discard it or call :func:`unfuse`."""
    fuse(model)
    with torch.device("meta"):  # built empty: nothing drawn from the global RNG, no init cost
        plain = type(model).from_config(model.config)
    plain.load_state_dict({k: v.detach().clone() for k, v in _base_state(model).items()}, assign=True)
    return plain
