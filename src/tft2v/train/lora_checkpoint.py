"""A LoRA run's checkpoints and exported model folder: the adapter and a reference to the frozen base.

A LoRA run (``model.lora``) trains a few MB of adapter weights on a frozen base that can be billions of
weights (VGen's ``unet/`` + ``unet_ema/`` in every checkpoint: about 11 GB). So its checkpoints hold, in
place of ``unet/`` and ``unet_ema/``:

* ``lora/`` — the live adapter, and ``lora_ema/`` — the EMA's (with EMA on): adapter folders in the
  diffusers/peft layout (:func:`tft2v.models.lora.save_adapter`), gathered from the shards under FSDP2;
* ``base.json`` — how the base was built (``model.init``, the absolute ``model.init_path``) and its
  fingerprint (:func:`tft2v.models.lora.base_fingerprint`).

The optimizer, EMA, scheduler and RNG/loader files are the ordinary ones (:mod:`tft2v.train.checkpoint`);
they cover only the trainable — adapter — weights. A resume rebuilds the base from the run's config as the
run began (the same seed draws the same fresh layers of an ``sd21`` or ``scratch`` base) and refuses, in
one line, a base whose fingerprint is not the recorded one.

The exported model folder (:func:`export_model`) is the pipeline's, with ``lora/`` (the EMA adapter when
there is one) applied on load and, in ``model_index.json``, a reference to the base's UNet folder (a
``model.init: pretrained`` base); a base with no such folder (converted from VGen / SD-2.1, or drawn from
scratch) is written into it once as ``unet/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tft2v.errors import CheckpointError
from tft2v.models import lora
from tft2v.train.checkpoint import is_fsdp2, plain_copy

BASE_NAME = "base.json"


def is_adapter_only(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` is a LoRA run's, holding the adapter and a reference to its base."""
    return (Path(checkpoint) / BASE_NAME).is_file()


def base_record(cfg, unet) -> dict:
    """What a LoRA checkpoint records of the run's base: ``model.init``, the absolute ``model.init_path``
    and the fingerprint :func:`tft2v.models.lora.apply_lora` took before injecting the adapter."""
    path = cfg.model.init_path
    return {"init": cfg.model.init, "init_path": str(Path(path).resolve()) if path else "",
            "fingerprint": unet._tft2v_lora_base}


def read_base(checkpoint: str | Path) -> dict:
    try:
        return json.loads((Path(checkpoint) / BASE_NAME).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {checkpoint}: cannot read {BASE_NAME} ({e})") from None


def save_adapters(folder: Path, *, accelerator, unet, ema, ema_params, base: dict) -> None:
    """Write ``lora/``, ``lora_ema/`` (with EMA) and ``base.json`` into the checkpoint ``folder`` being
    written. Collective under FSDP2 (the shards are gathered with every rank taking part); only the main
    process copies the weights to host memory and writes. The EMA adapter is read from the EMA's shadows,
    nothing is swapped into the live weights."""
    main = accelerator.is_main_process
    if not (main or is_fsdp2(accelerator)):
        return
    live = lora.adapter_state(unet, to_host=main)
    shadows = None
    if ema is not None:
        names = {id(p): n for n, p in unet.named_parameters()}
        shadows = lora.adapter_state(unet, values={names[id(p)]: s for p, s in zip(ema_params, ema.shadow_params)},
                                     to_host=main)
    if not main:
        return
    lora.save_adapter(unet, folder / "lora", weights=live)
    if shadows is not None:
        lora.save_adapter(unet, folder / "lora_ema", weights=shadows)
    (folder / BASE_NAME).write_text(json.dumps(base, indent=2))


def restore(checkpoint: str | Path, unet, base: dict, accelerator) -> None:
    """Resume a LoRA run: check that ``checkpoint`` was trained on this run's base, then fill the adapter
    from its ``lora/``. The main process's verdict is every rank's (before the weights are broadcast the
    other ranks hold their own draw of a base's fresh layers), so all ranks stop together."""
    from accelerate.utils import broadcast_object_list

    checkpoint = Path(checkpoint)
    error = _base_mismatch(checkpoint, base) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error:
        raise CheckpointError(error)
    folder = checkpoint / "lora"
    if not (folder / lora.WEIGHTS_NAME).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no lora/ adapter to resume this LoRA run from")
    lora.fill_adapter(unet, lora.read_adapter(folder)[1], lora.DEFAULT_ADAPTER, folder)


def _base_mismatch(checkpoint: Path, base: dict) -> str | None:
    if not is_adapter_only(checkpoint):  # an older LoRA checkpoint: its unet/ was loaded as the base
        return None
    saved = read_base(checkpoint)
    if lora.same_base(saved.get("fingerprint", {}), base["fingerprint"]):
        return None
    return (f"checkpoint {checkpoint} was trained on the base {_describe(saved)}, but this run's base is "
            f"{_describe(base)}; resume with the model.init / model.init_path the checkpoint names")


def _describe(base: dict) -> str:
    where = base.get("init_path") or "(drawn from the seed)"
    return f"{base.get('init')} {where} (fingerprint {base.get('fingerprint', {}).get('fingerprint')})"


def plain_base(accelerator, model, unet):
    """Collective: on the main process a plain UNet (no adapter layers) holding the full base weights, to
    write a base that has no folder of its own; None on the other ranks."""
    weights = accelerator.get_state_dict(model)  # a LoRA run's: the base only, plain names (lora._plain_state_dict)
    if not accelerator.is_main_process:
        return None
    return plain_copy(unet, {k: v.detach().cpu() for k, v in weights.items()})


def export_model(checkpoint: str | Path, out_dir: str | Path, *, scheduler, encoder, autoencoder, defaults: dict,
                 ema: bool = True, base_unet=None, fused_dir: str | Path | None = None) -> Path:
    """Write the model folder of a LoRA checkpoint: ``lora/`` (the EMA adapter when ``ema`` and the
    checkpoint has one) and the base — ``base_unet`` (a plain UNet holding the base weights) written as
    ``unet/``, or, without it, a reference to the UNet folder of the checkpoint's ``model.init: pretrained``
    base. ``fused_dir``: also a full model folder with the adapter merged into the base weights."""
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.pipeline_folder import write_lora_entry
    from tft2v.train.data import pretrained_unet_dir

    checkpoint = Path(checkpoint)
    base = read_base(checkpoint)
    adapter = checkpoint / ("lora_ema" if ema and (checkpoint / "lora_ema").is_dir() else "lora")
    reference = None
    if base_unet is None:
        if base.get("init") != "pretrained":
            raise CheckpointError(f"checkpoint {checkpoint}: its base (model.init {base.get('init')}) has no UNet "
                                  f"folder to refer to; export it from its training run (train.export), which "
                                  f"writes the base into the model folder once")
        reference = pretrained_unet_dir(base["init_path"])
    out = TFT2VPipeline(base_unet, scheduler, encoder, autoencoder, defaults=defaults).save_pretrained(out_dir)
    write_lora_entry(out, adapter, reference)
    if fused_dir is not None:
        pipe = TFT2VPipeline.from_pretrained(out)  # the base with the adapter applied, as generate loads it
        TFT2VPipeline(lora.merge_into_plain(pipe.unet), pipe.scheduler, pipe.encoder, pipe.autoencoder,
                      defaults=pipe.defaults).save_pretrained(fused_dir)
    return out
