"""``tft2v distill``'s run: the training loop of :class:`tft2v.train.trainer.Trainer` with the consistency-
distillation step (:mod:`tft2v.train.distill`) in place of the recipe's.

Everything the trainer has carries over — accelerate (single process, DDP), gradient accumulation, the mixing
loader, EMA, logs, non-finite steps, atomic checkpoints, exact resume, LoRA, export. What distillation adds:

* the frozen teacher, read from ``distill.teacher`` (a model folder); the student starts as it (``model.init:
  pretrained`` on the same folder), in full or through LoRA (``model.lora``);
* the target network (``distill.target: ema``): a frozen copy of the student's trainable weights moved towards
  them by ``distill.target_decay`` after every applied step, saved in each checkpoint (``target.safetensors``)
  so that a resume is exact;
* validation videos from the few-step sampler at each of ``distill.validation_steps``, watched by the collapse
  guard (:mod:`tft2v.train.collapse`), whose first-seen step is kept in ``trainer_state.json``;
* a few-step exported model folder (LCMScheduler, ``distill.sample_steps`` steps, no CFG pass).

Videos are ``(B, C, F, H, W)``; an image is F = 1.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import safetensors.torch
import torch

from tft2v.config import Config
from tft2v.errors import CheckpointError, ConfigError
from tft2v.train import checkpoint as ckpt_io
from tft2v.train.collapse import CollapseWatch
from tft2v.train.distill import ConsistencyDistillation
from tft2v.train.trainer import Trainer

TARGET_NAME = "target.safetensors"


def check_distill_config(cfg: Config) -> None:
    """A distillation config names its teacher, and its student starts as that teacher."""
    teacher = cfg.distill.teacher
    if not teacher:
        raise ConfigError("distillation needs a teacher model folder (tft2v distill --teacher DIR, or distill.teacher)")
    if cfg.model.init != "pretrained" or Path(cfg.model.init_path).resolve() != Path(teacher).resolve():
        raise ConfigError(f"the student starts as the teacher: model.init must be 'pretrained' and model.init_path "
                          f"the teacher {teacher}, got {cfg.model.init!r} {cfg.model.init_path!r}")


def teacher_parts(teacher: str | Path):
    """(frozen teacher UNet, its encoder, its autoencoder) from a model folder; a distilled folder is refused."""
    from tft2v.autoencoder import load_autoencoder
    from tft2v.encoders import load_encoder
    from tft2v.pipeline_folder import component_dir, load_scheduler, load_unet, read_index, unet_dir

    index = read_index(teacher)
    if type(load_scheduler(component_dir(teacher, index, "scheduler"))).__name__ == "LCMScheduler":
        raise ConfigError(f"teacher {teacher} is already a distilled (few-step) model; distil its own teacher")
    if (index.get("lora") or {}).get("adapter"):
        raise ConfigError(f"teacher {teacher} is a LoRA model folder; fuse it first (train.export_fused writes "
                          f"model_fused/)")
    unet = load_unet(unet_dir(teacher, index)).requires_grad_(False)
    return (unet, load_encoder(component_dir(teacher, index, "encoder")),
            load_autoencoder(component_dir(teacher, index, "autoencoder")))


class DistillTrainer(Trainer):
    """The trainer with the consistency-distillation step; ``run()`` distils to ``train.max_steps``."""

    def __init__(self, cfg: Config, resume: str | None = None, overwrite: bool = False):
        check_distill_config(cfg)
        teacher, encoder, autoencoder = teacher_parts(cfg.distill.teacher)
        super().__init__(cfg, resume, overwrite, encoder=encoder, autoencoder=autoencoder)
        if ckpt_io.is_fsdp2(self.accelerator):
            raise ConfigError("tft2v distill runs in one process or under DDP; FSDP is not supported")
        self.target = None
        if cfg.distill.target == "ema":
            self.target = copy.deepcopy(self.unet).requires_grad_(False).eval()
            if self.resume_from is not None:
                self._load_target(self.resume_from)
        since = None
        if self.resume_from is not None:
            since = json.loads((self.resume_from / "trainer_state.json").read_text()).get("collapse_since")
        self.collapse = CollapseWatch(since)
        self.recipe = ConsistencyDistillation(cfg.distill, self.recipe, teacher.to(self.device).eval(), self.target)

    # -- the target network ------------------------------------------------------------------------

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.unet.named_parameters() if p.requires_grad}

    def _target_params(self) -> dict[str, torch.Tensor]:
        """The target's copies of the student's trainable weights, by name."""
        own = dict(self.target.named_parameters())
        return {n: own[n] for n in self._trainable()}

    def train_step(self, batches: list[dict]) -> dict:
        out = super().train_step(batches)
        if self.target is not None and self.nonfinite_in_a_row == 0:  # the step was applied
            rate = 1.0 - self.cfg.distill.target_decay
            targets = self._target_params()
            with torch.no_grad():
                for name, p in self._trainable().items():
                    targets[name].lerp_(p.detach(), rate)
        return out

    def write_extra_state(self, folder: Path) -> None:
        if self.target is not None:
            safetensors.torch.save_file({n: t.detach().cpu().contiguous() for n, t in self._target_params().items()},
                                        folder / TARGET_NAME)

    def _load_target(self, checkpoint: Path) -> None:
        path = checkpoint / TARGET_NAME
        if not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} has no {TARGET_NAME} (the distillation target network); "
                                  f"it was not written with distill.target: ema")
        saved, own = safetensors.torch.load_file(path), self._target_params()
        if set(saved) != set(own):
            missing = sorted(set(own) - set(saved))[:3] or sorted(set(saved) - set(own))[:3]
            raise CheckpointError(f"checkpoint {checkpoint}: {TARGET_NAME} does not match the student ({missing})")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(saved[name])

    def trainer_state(self) -> dict:
        return {**super().trainer_state(), "collapse_since": self.collapse.since}

    # -- validation --------------------------------------------------------------------------------

    def validate(self) -> list[Path]:
        """Few-step validation videos (``distill.validation_steps``, the EMA weights when EMA is on), checked
        by the collapse guard; a collapse is a warning line naming the step it started at."""
        from tft2v.train.validation import sample_few_step_clips, sampling_unet, write_clips

        cfg, acc = self.cfg, self.accelerator
        prompts = list(cfg.train.validation_prompts)
        paths: list[Path] = []
        if prompts:
            with sampling_unet(acc, self.model, self.unet, self.ema, self.params) as unet:
                if unet is not None:
                    out_dir = self.run_dir / "validation" / f"step-{self.step:08d}"
                    clips = {}
                    for k in cfg.distill.validation_steps:
                        with acc.autocast():
                            video = sample_few_step_clips(unet, self.encoder, self.autoencoder, cfg, k)
                        paths += write_clips(video, prompts, out_dir, cfg.data.fps, f"_{k}step")
                        clips.update({f"{p!r} at {k} steps": video[i:i + 1] for i, p in enumerate(prompts)})
                    warning = self.collapse.check(self.step, clips)
                    if warning:
                        self.log.message(warning)
                    self.log.log(self.step, {"validation/collapse_since": self.collapse.since})
                    self.log.message(f"validation step {self.step}: {len(paths)} videos in {out_dir}")
        acc.wait_for_everyone()
        return paths


def distill(cfg: Config, resume: str | None = None, overwrite: bool = False) -> dict:
    """Distil ``cfg.distill.teacher`` per ``cfg`` (resume / overwrite as :func:`tft2v.train.trainer.train`);
    returns the run summary."""
    return DistillTrainer(cfg, resume, overwrite).run()
