"""The MODEL FOLDER format read and written by :class:`tft2v.pipeline.TFT2VPipeline`.

A diffusers-style folder::

    model_index.json   {"_class_name": "TFT2VPipeline", "<component>": [library, class] | [null, null],
                        "tft2v": {generation defaults}}
    unet/              TFT2VUNet.save_pretrained (config.json + safetensors)
    scheduler/         diffusers scheduler_config.json
    encoder/           ConditionEncoder.save_pretrained (config.json names its "kind")
    autoencoder/       a diffusers AutoencoderKL folder, or config.json with kind "none" (pixel space)

A component recorded as ``[null, null]`` was not written (e.g. ``tft2v convert vgen`` without an
OpenCLIP path); loading such a folder needs that component passed in explicitly.

A LoRA run's model folder (:mod:`tft2v.train.lora_checkpoint`) also has ``lora/`` (an adapter folder in the
diffusers/peft layout, :mod:`tft2v.models.lora`) and ``"lora": {"adapter": "lora", "base_unet": PATH}`` in
``model_index.json``: the UNet is the base's folder ``PATH`` (absolute; null: ``unet/`` here) with the
adapter applied on load.

Videos elsewhere are ``(B, C, F, H, W)``; nothing here touches tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tft2v.errors import CheckpointError, TFT2VError
from tft2v.jsonio import read_json

INDEX_NAME = "model_index.json"
COMPONENTS = ("unet", "scheduler", "encoder", "autoencoder")
# What a user must do to fill a component that a folder lacks.
_HOW_TO_FILL = {
    "unet": "it holds the trained video UNet (tft2v train / tft2v convert write it)",
    "scheduler": "write one with TFT2VPipeline.set_scheduler(...).save_pretrained",
    "encoder": "convert with --openclip PATH, or pass encoder= to TFT2VPipeline.from_pretrained",
    "autoencoder": "convert with --vae PATH, or pass autoencoder= to TFT2VPipeline.from_pretrained",
}


def read_index(directory: str | Path) -> dict:
    """Validate ``directory`` as a model folder and return its ``model_index.json``."""
    directory = Path(directory)
    if not directory.exists():
        raise TFT2VError(f"model folder {directory} does not exist")
    if not directory.is_dir():
        raise TFT2VError(f"model path {directory} is a file, not a model folder")
    path = directory / INDEX_NAME
    index = read_json(path, f"{directory} is not a tft2v model folder: it has no {INDEX_NAME}")
    if not isinstance(index, dict) or index.get("_class_name") != "TFT2VPipeline":
        raise TFT2VError(f"{path} does not describe a TFT2VPipeline (its _class_name is not 'TFT2VPipeline')")
    defaults = index.get("tft2v", {})
    if not isinstance(defaults, dict):
        raise TFT2VError(f"{path}: 'tft2v' must be a dict of generation defaults")
    return index


def component_dir(directory: str | Path, index: dict, name: str) -> Path:
    """The folder of component ``name``; a one-line error says how to fill it when it is absent."""
    sub = Path(directory) / name
    entry = index.get(name)
    recorded = isinstance(entry, list) and len(entry) == 2 and entry[0] is not None
    if not recorded or not sub.is_dir():
        why = "was saved without it" if not recorded else f"has no {name}/ folder"
        raise TFT2VError(f"model folder {directory} {why} — missing component '{name}': {_HOW_TO_FILL[name]}")
    if not any(sub.iterdir()):
        raise TFT2VError(f"model folder {directory}: component folder {name}/ is empty")
    return sub


def unet_dir(directory: str | Path, index: dict) -> Path:
    """The UNet folder: ``unet/``, or the base a LoRA model folder refers to."""
    base = (index.get("lora") or {}).get("base_unet")
    if base and not (Path(directory) / "unet").is_dir():
        if not (Path(base) / "config.json").is_file():
            raise TFT2VError(f"model folder {directory} applies its LoRA adapter to the base UNet {base}, which is "
                             f"not there; restore it, or point 'lora.base_unet' in its {INDEX_NAME} at a copy")
        return Path(base)
    return component_dir(directory, index, "unet")


def write_lora_entry(directory: Path, adapter: Path, base_unet: Path | None) -> None:
    """Make the model folder ``directory`` a LoRA one: ``lora/`` = a copy of the ``adapter`` folder, applied
    on load to ``base_unet`` (a UNet folder; None: the folder's own ``unet/``)."""
    from tft2v.models import TFT2VUNet

    index = read_index(directory)
    shutil.copytree(adapter, directory / "lora", dirs_exist_ok=True)
    if base_unet is not None:
        index["unet"] = [TFT2VUNet.__module__, TFT2VUNet.__name__]  # recorded, if not written here
    index["lora"] = {"adapter": "lora", "base_unet": None if base_unet is None else str(Path(base_unet).resolve())}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def load_unet(path: Path):
    from tft2v.models import TFT2VUNet

    try:
        return TFT2VUNet.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load the UNet from {path}: {first}") from None


def load_scheduler(path: Path):
    import diffusers

    config_path = path / "scheduler_config.json"
    config = read_json(config_path, f"scheduler folder {path} has no scheduler_config.json")
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not isinstance(cls, type) or not cls.__name__.endswith("Scheduler"):
        raise TFT2VError(f"{config_path} names an unknown scheduler class {config.get('_class_name')!r}")
    return cls.from_config(config)


def class_entry(component) -> list:
    """``[library, class]`` for model_index.json (``[None, None]`` for an absent component)."""
    if component is None:
        return [None, None]
    module = type(component).__module__
    library = "diffusers" if module.startswith("diffusers") else module
    return [library, type(component).__name__]


def write_index(directory: Path, components: dict, defaults: dict) -> None:
    from tft2v import __version__

    index = {"_class_name": "TFT2VPipeline", "_tft2v_version": __version__}
    index.update({name: class_entry(components.get(name)) for name in COMPONENTS})
    index["tft2v"] = defaults
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
