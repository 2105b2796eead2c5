"""The training loop: accelerate (single process, DDP; FSDP see the README), the TF-T2V recipe per step.

One optimizer step = ``train.grad_accum`` mixing-loader steps (micro-batches); each carries an image
micro-batch (content branch, (B, 3, 1, H, W)) and/or a video micro-batch (motion branch,
(B, 3, F, H, W)). Both branches of a micro-batch are summed into one loss and ONE backward, and the
micro-batches accumulate under ``accelerator.accumulate`` — so both branches update the shared UNet in
one optimizer step, and gradients are synchronised once per step under DDP and FSDP (the DeepSpeed
paths below are untested: nothing in tft2v has run under it). Each sample draws its
randomness from its own generator (:func:`tft2v.train.recipe.sample_generators`); model dropout uses
the global torch RNG, which the checkpoints save and restore — together this makes ``--resume``
continue bit-exactly.

A step whose loss or gradients are not finite (on any rank) is caught before ``optimizer.step()`` and
skipped: no optimizer, EMA or LR-schedule update, the weights untouched; its number and its batches are
used up (``self.step`` and the loader advance, so the sample log and the per-sample seeds go on as
before) and ``skipped_steps`` counts it. After ``train.max_nonfinite_skips`` such steps in a row the run
stops with a ``debug-step-*`` checkpoint of the last good weights.
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from tft2v.config import Config, dump_config
from tft2v.errors import TFT2VError
from tft2v.train import checkpoint as ckpt_io
from tft2v.train.data import (
    branch_strides,
    build_autoencoder_from_config,
    build_encoder_from_config,
    build_loader,
    build_unet,
    check_data_paths,
    check_geometry,
)
from tft2v.models.lora import apply_lora
from tft2v.train import lora_checkpoint
from tft2v.train.logging import RunLogger
from tft2v.train.nonfinite import step_is_finite
from tft2v.train.run_folder import continue_run_logs, prepare_run_folder
from tft2v.train.sample_log import SampleLog, step_row
from tft2v.train.recipe import BRANCHES, Recipe, sample_generators, step_weight_sums

OOM_HINT = ("lower data.image_batch_size / data.video_batch_size, set model.gradient_checkpointing=true, "
            "train.mixed_precision=bf16, or raise train.grad_accum")


# FSDP units: with accelerate's TRANSFORMER_BASED_WRAP each of these UNet blocks is sharded on its own
# (configs/accelerate_fsdp.yaml names them; they are also the default when a config names none).
FSDP_BLOCKS = ("ResBlock", "SpatialTransformer", "TemporalTransformer")


def _fsdp_plugin():
    """The FSDP plugin ``accelerate launch`` describes in its FSDP_* variables, or None without FSDP.

    Only FSDP2 (``fully_shard``) is supported: FSDP1 wraps each block in a FullyShardedDataParallel
    module, which the UNet's forward (dispatching on its block classes) does not see through.
    """
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    from tft2v.errors import ConfigError

    named = "FSDP_AUTO_WRAP_POLICY" in os.environ
    plugin = FullyShardedDataParallelPlugin(
        auto_wrap_policy=None if named else "transformer_based_wrap",
        transformer_cls_names_to_wrap=None if os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") else list(FSDP_BLOCKS))
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP version {plugin.fsdp_version} is not supported; set fsdp_version: 2 in the "
                          f"accelerate config (see configs/accelerate_fsdp.yaml)")
    return plugin


def _build_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    from tft2v.train.logging import accelerator_kwargs

    # Steps alternate branches (and image tokens / conditions may be absent), so not every parameter
    # receives a gradient in every backward.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    fsdp = _fsdp_plugin()
    # cpu=True on GPU-less machines lets torchrun-launched processes form a gloo group (MULTI_CPU).
    # train.trackers (TensorBoard, wandb) log through accelerate, their files inside the run folder.
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[ddp], fsdp_plugin=fsdp,
                      gradient_accumulation_steps=cfg.train.grad_accum, cpu=not torch.cuda.is_available(),
                      **accelerator_kwargs(cfg.train.trackers, cfg.out_dir))
    if fsdp is not None and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate only turns FSDP on for accelerator devices; FSDP2 itself runs on CPU over gloo. Set
        # it as accelerate does on GPUs: in both shared states (each AcceleratorState() call re-reads
        # PartialState's).
        from accelerate.state import PartialState

        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = fsdp
    return acc


def _broadcast_weights(unet, device) -> None:
    """Every rank takes the main process's initial weights (ranks seed their init differently). DDP
    does this itself; FSDP2 shards each rank's own tensors as they are. Parameters and buffers, not
    ``state_dict()``: a LoRA run's leaves out the (randomly initialised) adapters."""
    import torch.distributed as dist

    unet.to(device)
    with torch.no_grad():
        for tensor in [*unet.parameters(), *unet.buffers()]:
            dist.broadcast(tensor, src=0)


def _seed_globals(seed: int, rank: int) -> None:
    # Model dropout draws from the global torch RNG; seed it per rank (checkpoints restore it).
    random.seed(seed * 7919 + rank)
    np.random.seed((seed * 7919 + rank) % 2**32)
    torch.manual_seed(seed * 7919 + rank)


def _freeze_for_recipe(cfg: Config, unet) -> None:
    if cfg.recipe.trainable == "condition_encoders":
        # VideoComposer-style stage: only the condition encoders learn; the video UNet stays fixed.
        unet.requires_grad_(False)
        unet.condition_encoders.requires_grad_(True)


def _depth_model(cfg: Config, device):
    """The recipe's depth network, loaded once and moved to ``device`` (or the 'luminance' fallback)."""
    path = cfg.recipe.depth_model
    if "depth" not in cfg.recipe.conditions or not path or path == "luminance":
        return path or None
    from tft2v.data.conditions_depth import load_depth_model

    return load_depth_model(path).to(device)


class Trainer:
    """Holds a run's components; ``run()`` trains to ``train.max_steps`` and returns a summary dict."""

    def __init__(self, cfg: Config, resume: str | None = None, overwrite: bool = False, encoder=None,
                 autoencoder=None):
        """``encoder`` / ``autoencoder``: already-built frozen components to use instead of building
        them from ``cfg`` (e.g. a model folder's own, when fine-tuning it)."""
        from diffusers.optimization import get_cosine_schedule_with_warmup

        from tft2v.diffusion import build_training_scheduler

        check_data_paths(cfg)
        self.cfg, self.run_dir = cfg, Path(cfg.out_dir)
        self.config_yaml = dump_config(cfg)
        self.accelerator = acc = _build_accelerator(cfg)
        self.rank, self.device = acc.process_index, acc.device
        # Before anything heavy is built: a run-folder mistake is reported at once.
        self.resume_from = prepare_run_folder(self.run_dir, resume, overwrite, acc.is_main_process)
        acc.wait_for_everyone()  # --overwrite clears the folder on the main process first
        _seed_globals(cfg.seed, self.rank)
        self.encoder = (encoder or build_encoder_from_config(cfg)).to(self.device)
        self.autoencoder = (autoencoder or build_autoencoder_from_config(cfg)).to(self.device)
        self.unet = build_unet(cfg, self.encoder, self.autoencoder)
        check_geometry(cfg, self.unet, self.autoencoder)
        lora_resume = (self.resume_from is not None and cfg.model.lora.rank > 0
                       and lora_checkpoint.is_adapter_only(self.resume_from))
        if self.resume_from is not None and not lora_resume:  # (an older LoRA checkpoint's unet/: the base)
            ckpt_io.load_unet_weights(self.resume_from, self.unet)
        if cfg.model.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        _freeze_for_recipe(cfg, self.unet)
        # model.lora: frozen base, adapters train; the checkpoints hold the adapters and name the base.
        self.lora_base = None
        if apply_lora(cfg.model.lora, self.unet) is not None:
            self.lora_base = lora_checkpoint.base_record(cfg, self.unet)
            if self.resume_from is not None:
                lora_checkpoint.restore(self.resume_from, self.unet, self.lora_base, acc)
        o = cfg.optim
        sharded = acc.distributed_type.value in ("FSDP", "DEEPSPEED")
        optimizer = torch.optim.AdamW([p for p in self.unet.parameters() if p.requires_grad], lr=o.lr,
                                      betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                      fused=o.fused and not sharded)
        if ckpt_io.is_fsdp2(acc):
            _broadcast_weights(self.unet, self.device)
        # Model and optimizer in one prepare call (FSDP2 and DeepSpeed need both: fully_shard swaps the
        # optimizer's parameters for the sharded ones); the EMA is built over the prepared parameters.
        self.model, self.optimizer = acc.prepare(self.unet, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Not passed to accelerate.prepare: it would step the schedule once per process.
        self.lr_scheduler = get_cosine_schedule_with_warmup(optimizer, o.warmup_steps, cfg.train.max_steps)
        self.ema = None
        if o.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=o.ema_decay)
            self.ema.to(self.device)  # shadow weights live beside the (now moved) model weights
        if cfg.model.compile:
            self.model = torch.compile(self.model)
        self.loader = build_loader(cfg, self.rank, acc.num_processes, self.encoder, self.autoencoder)
        self.strides = branch_strides(cfg)
        self.step = 0
        self.skipped_steps = self.nonfinite_in_a_row = 0  # steps skipped for a non-finite loss / gradients
        if self.resume_from is not None:
            state = ckpt_io.load_training_state(self.resume_from, accelerator=acc, optimizer=self.optimizer,
                                                lr_scheduler=self.lr_scheduler, ema=self.ema, scaler=acc.scaler,
                                                model=self.model)
            self.step = state["step"]
            self.skipped_steps = state["state"].get("skipped_steps", 0)
            self.nonfinite_in_a_row = state["state"].get("nonfinite_in_a_row", 0)
            self.loader.load_state_dict(state["loader"])
        if resume and acc.is_main_process:
            # Steps after the checkpoint (all of them for "auto-or-new" without one) are logged again.
            continue_run_logs(self.run_dir, self.resume_from, self.step)
        self.recipe = Recipe(cfg.recipe, cfg.schedule, self.encoder, self.autoencoder,
                             build_training_scheduler(cfg.schedule), depth_model=_depth_model(cfg, self.device),
                             data_size=(cfg.data.height, cfg.data.width))
        self.log = RunLogger(self.run_dir, cfg.train.max_steps, self.step, enabled=acc.is_main_process,
                             progress=cfg.train.progress, accelerator=acc, config=cfg)

    # -- one optimizer step ---------------------------------------------------------------------

    def train_step(self, batches: list[dict]) -> dict:
        """Forward/backward every micro-batch (both branches in one backward), then one optimizer step —
        or none, when the loss or the gradients are not finite on some rank (:mod:`tft2v.train.nonfinite`)."""
        acc, cfg = self.accelerator, self.cfg
        logged: dict[str, float] = {}
        total = 0.0
        grad_norm, finite = None, True
        weight_sums = step_weight_sums(self.recipe, batches,
                                       lambda t: acc.reduce(t.to(self.device), "sum").cpu(),
                                       len(batches) * acc.num_processes)
        for micro, batch in enumerate(batches):
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, parts = self._micro_loss(batch, micro, weight_sums)
                acc.backward(loss)  # accelerate divides by grad_accum
                total += float(loss.detach()) / len(batches)
                if acc.sync_gradients:  # the step's last micro-batch: its gradients are complete
                    grad_norm, finite = step_is_finite(acc, self.model, self.params, total, cfg.optim.max_grad_norm)
                    if finite:
                        self.optimizer.step()
                    elif acc.scaler is not None and cfg.optim.max_grad_norm > 0:
                        acc.scaler.update()  # clipping unscaled the gradients: reset the scaler for the next step
                self.optimizer.zero_grad(set_to_none=True)  # a no-op until the step's last micro-batch
            for k, v in parts.items():
                logged[k] = logged.get(k, 0.0) + v / len(batches)
        loss_all = acc.reduce(torch.tensor([total], device=self.device), "mean").item()
        if finite:
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.params)
            self.nonfinite_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
        self.step += 1
        out = {"loss": loss_all, **logged, "lr": self.lr_scheduler.get_last_lr()[0],
               "skipped_steps": self.skipped_steps}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        if not finite:
            self.log.message(f"step {self.step}: loss {loss_all}, gradient norm {grad_norm}: not finite, step "
                             f"skipped, weights unchanged ({self.nonfinite_in_a_row} in a row, "
                             f"{self.skipped_steps} in all)")
        return out

    def _micro_loss(self, batch: dict, micro: int, weight_sums: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum of the branch losses of one micro-batch; sample ``i`` of a branch gets the generator of
        its index in the whole step, (micro · world + rank) · B + i (B: the branch's largest micro-batch,
        see :func:`branch_strides`), and weighs as in one big batch."""
        loss, parts = None, {}
        for branch in BRANCHES:
            if batch[branch] is None:
                continue
            b = len(batch[branch]["key"])
            first = (micro * self.accelerator.num_processes + self.rank) * self.strides[branch]
            gens = sample_generators(self.cfg.seed, self.step, branch, first, b, device=self.device)
            branch_loss, branch_parts = self.recipe.branch_loss(self.model, self.unet, batch[branch], branch, gens,
                                                                self.device, weight_sums[branch])
            loss = branch_loss if loss is None else loss + branch_loss
            parts.update(branch_parts)
        return loss, parts

    def stop_if_nonfinite(self) -> None:
        """After ``train.max_nonfinite_skips`` skipped steps in a row: a debug checkpoint, then a one-line error."""
        n = self.nonfinite_in_a_row
        if n < self.cfg.train.max_nonfinite_skips:
            return
        path = self.save(debug=True)  # the weights are the last good ones: no bad step reached them
        raise TFT2VError(f"loss or gradients not finite on {n} steps in a row (steps {self.step - n + 1}-{self.step}"
                         f"); stopped, the last good weights are in {path} (--resume {path} goes on after these "
                         f"batches)")

    # -- checkpoints, validation, export ----------------------------------------------------------

    def save(self, debug: bool = False) -> Path:
        path = ckpt_io.save_checkpoint(
            self.run_dir / "checkpoints", self.step, accelerator=self.accelerator, model=self.model, unet=self.unet,
            optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, loader_state=self.loader.state_dict(),
            config_yaml=self.config_yaml, ema=self.ema, ema_params=self.params, scaler=self.accelerator.scaler,
            keep_last=self.cfg.train.keep_last, debug=debug, write_weights=self._write_adapters(),
            write_extra=self.write_extra_state, trainer_state=self.trainer_state())
        return path

    def trainer_state(self) -> dict:
        """The loop's counters that ``trainer_state.json`` keeps for a resume."""
        return {"skipped_steps": self.skipped_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row}

    def write_extra_state(self, folder: Path) -> None:
        """More files for the checkpoint being written into ``folder`` (main process): none in training; a
        distillation's target network (:class:`tft2v.train.distill_trainer.DistillTrainer`)."""

    def _write_adapters(self):
        """A LoRA run's checkpoint weights: the adapters and a reference to the base, not the base."""
        if self.lora_base is None:
            return None
        return lambda folder: lora_checkpoint.save_adapters(folder, accelerator=self.accelerator, unet=self.unet,
                                                            ema=self.ema, ema_params=self.params, base=self.lora_base)

    def validate(self) -> list[Path]:
        """Validation videos from the EMA weights when EMA is on (what export writes), else the live ones.
        Every rank takes part (under FSDP the full weights are gathered); the main process samples."""
        from tft2v.train.validation import sampling_unet, validation_videos

        paths = []
        if self.cfg.train.validation_prompts:
            with sampling_unet(self.accelerator, self.model, self.unet, self.ema, self.params) as unet:
                if unet is not None:
                    with self.accelerator.autocast():
                        paths = validation_videos(unet, self.encoder, self.autoencoder, self.cfg, self.step,
                                                  self.run_dir / "validation")
                    self.log.message(f"validation step {self.step}: {len(paths)} videos in {paths[0].parent}")
        self.accelerator.wait_for_everyone()
        return paths

    def export(self, checkpoint: Path) -> Path | None:
        """The run's model folder (and with ``train.export_fused`` the fused one) from ``checkpoint``, written
        by the main process. Collective for a LoRA run whose base has no UNet folder to refer to (not
        ``model.init: pretrained``, or one whose layout the run switched, e.g. ``refiner_layout``): its base is
        gathered and written into the model folder once."""
        from tft2v.train.validation import export_model_folder

        from tft2v.train.data import changes_pretrained_layout

        base_unet = None
        if self.lora_base is not None and (self.lora_base["init"] != "pretrained" or changes_pretrained_layout(
                self.lora_base["init_path"], self.unet)):
            base_unet = lora_checkpoint.plain_base(self.accelerator, self.model, self.unet)
        if not self.accelerator.is_main_process:
            return None
        if importlib.util.find_spec("tft2v.pipeline") is None:  # lands separately from the trainer
            self.log.message("model folder not written: tft2v.pipeline is not available in this install")
            return None
        fused = self.run_dir / "model_fused" if self.cfg.train.export_fused else None
        return export_model_folder(checkpoint, self.run_dir / "model", base_unet=base_unet, fused_dir=fused,
                                   encoder=self.encoder, autoencoder=self.autoencoder)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop_at: int | None = None) -> dict:
        """Train to ``train.max_steps`` (or stop early after step ``stop_at``, schedule unchanged)."""
        t = self.cfg.train
        end = t.max_steps if stop_at is None else min(stop_at, t.max_steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
            self.log.message(f"resolved config (saved to {self.run_dir / 'config.yaml'}):\n{self.config_yaml}")
            if self.resume_from is not None:
                self.log.message(f"resumed from {self.resume_from} at step {self.step}")
        start_step, start_time = self.step, time.time()
        losses: list[float] = []
        last_ckpt = None
        self.model.train()
        batches = iter(self.loader)
        sample_log = SampleLog(self.run_dir, self.accelerator) if t.log_samples else None
        try:
            while self.step < end:
                micro_batches = [next(batches) for _ in range(t.grad_accum)]
                logs = self.train_step(micro_batches)
                epochs = self.loader.state_dict()["epochs"]
                logs["epoch"] = step_row(self.step, self.rank, [], epochs)["epoch"]
                if sample_log is not None:
                    sample_log.write(step_row(self.step, self.rank, micro_batches, epochs))
                if math.isfinite(logs["loss"]):  # a skipped step's NaN would make the summary NaN
                    losses.append(logs["loss"])
                self.log.advance(logs["loss"])
                if self.step % t.log_every == 0 or self.step == end or self.nonfinite_in_a_row:  # skipped: logged
                    logs["steps_per_sec"] = (self.step - start_step) / max(time.time() - start_time, 1e-9)
                    self.log.log(self.step, logs)
                self.stop_if_nonfinite()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    last_ckpt = self.save()
                if t.validate_every and self.step % t.validate_every == 0:
                    self.validate()
        except torch.cuda.OutOfMemoryError:
            raise TFT2VError(f"out of GPU memory at step {self.step + 1}: {OOM_HINT}") from None
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                raise TFT2VError(f"out of memory at step {self.step + 1}: {OOM_HINT}") from None
            raise
        finally:
            if sample_log is not None:
                sample_log.close()
        if last_ckpt is None or not last_ckpt.name.endswith(f"{self.step:08d}"):
            last_ckpt = self.save()
        videos = [] if t.validate_every and self.step % t.validate_every == 0 else self.validate()
        model_dir = self.export(last_ckpt) if t.export else None
        elapsed = time.time() - start_time
        summary = _summary(losses, start_step, self.step, elapsed, last_ckpt, model_dir, videos)
        if self.accelerator.is_main_process:
            self.log.log(self.step, {"summary": summary})
            self.log.message(_format_summary(summary))
        self.log.close()
        return summary


def _summary(losses, start_step, step, elapsed, ckpt, model_dir, videos) -> dict:
    k = max(1, len(losses) // 10)
    return {
        "steps": step, "steps_this_run": step - start_step, "seconds": round(elapsed, 2),
        "steps_per_sec": round((step - start_step) / max(elapsed, 1e-9), 3),
        "loss_first": round(float(np.mean(losses[:k])), 5) if losses else None,
        "loss_last": round(float(np.mean(losses[-k:])), 5) if losses else None,
        "checkpoint": str(ckpt), "model": str(model_dir) if model_dir else None,
        "validation_videos": [str(p) for p in videos],
    }


def _format_summary(s: dict) -> str:
    lines = [f"done: {s['steps']} steps ({s['steps_this_run']} this run) in {s['seconds']} s, "
             f"{s['steps_per_sec']} steps/s"]
    if s["loss_first"] is not None:
        lines.append(f"loss (mean of first/last 10%): {s['loss_first']} -> {s['loss_last']}")
    lines.append(f"checkpoint: {s['checkpoint']}")
    if s["model"]:
        lines.append(f"model folder: {s['model']}")
    return "\n".join(lines)


def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> dict:
    """Train per ``cfg`` (optionally resuming: a run/checkpoint folder, "auto" or "auto-or-new"; or
    ``overwrite`` a previous run in ``out_dir``); returns the summary."""
    return Trainer(cfg, resume, overwrite).run()
