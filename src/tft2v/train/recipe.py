"""The TF-T2V training step: content and motion branches of one shared UNet (SPEC §1).

Batches come from :class:`tft2v.data.mixing.MixedLoader`: ``pixels`` (B, 3, F, H, W) in [-1, 1]
(an image batch has F = 1), ``cond_frame`` (B, 3, H, W), ``caption`` list, ``has_text`` (B,) bool.
Batches from a latent cache (``data.cache``, tft2v.data.cache) carry ``latent_mean``/``latent_std``,
``text_tokens`` and ``image_embed`` instead of pixels: the step then draws the posterior sample and
picks the embeddings exactly as it would have computed them, drawing the same randomness.

* content branch — an image micro-batch as 1-frame videos, conditioned on its caption tokens
  (+ optionally the image tokens of the image itself);
* motion branch — a video micro-batch conditioned on the image embedding of its conditioning frame
  (VGen's middle frame) as extra tokens, with the text replaced by the empty-string embedding, except
  labelled videos (``has_text``), which keep their captions (semi-supervised);
* CFG dropout replaces a sample's text by the empty or negative-prompt embedding with prob p;
* loss per branch ``L_base + λ·L_coh`` in the model's prediction space (L_coh is 0 for F = 1);
* compositional: conditions are extracted on the fly from the same pixels, with the model's own
  condition dropout masks.

All randomness of a step comes from the per-sample ``generators`` passed in (on the batch's device),
so a step is a pure function of (weights, batch, generator states) — which is what makes resuming
exact and the draws independent of batch size, micro-batching and the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tft2v.config import RecipeConfig
from tft2v.diffusion import ScheduleConfig, noisy_inputs, prediction_target, sample_noise, sample_timesteps
from tft2v.errors import TFT2VError
from tft2v.losses import diffusion_loss, temporal_coherence_loss

BRANCHES = ("image", "video")


class Recipe:
    """Builds each branch's model inputs from a batch and computes its loss.

    ``encoder`` is a frozen :class:`tft2v.encoders.base.ConditionEncoder`; ``autoencoder`` maps pixels
    (B, 3, F, H, W) to latents (B, C, F, h, w); ``noise_scheduler`` holds the training ᾱ.
    """

    def __init__(self, cfg: RecipeConfig, schedule: ScheduleConfig, encoder, autoencoder, noise_scheduler,
                 depth_model=None, data_size: tuple[int, int] | None = None):
        if cfg.refine.enabled and data_size is None:
            raise TFT2VError("recipe.refine needs the training clips' data_size (height, width)")
        self.cfg, self.schedule, self.data_size = cfg, schedule, data_size
        self.encoder, self.autoencoder, self.noise_scheduler = encoder, autoencoder, noise_scheduler
        self.depth_model = depth_model
        self._text_cache: dict[str, torch.Tensor] = {}

    def _fixed_text(self, prompt: str, device) -> torch.Tensor:
        """(1, L, D) embedding of a fixed prompt (empty or negative), computed once."""
        if prompt not in self._text_cache:
            self._text_cache[prompt] = self.encoder.encode_text([prompt]).float()
        return self._text_cache[prompt].to(device)

    def sample_weights(self, batch: dict, branch: str, device) -> torch.Tensor:
        """(B,) float weights of the samples in the loss, on ``device``: with ``text_free_videos`` off,
        text-free videos get weight 0. Masking (not dropping) keeps every rank's graph the same shape under DDP."""
        if branch == "video" and not self.cfg.text_free_videos:
            return batch["has_text"].to(device).float()
        return torch.ones(len(batch["has_text"]), device=device)

    @torch.no_grad()
    def inputs(self, batch: dict, branch: str, generators: list[torch.Generator], device) -> dict:
        """Model inputs and the regression target of one branch; sample ``i`` draws all of its randomness
        from ``generators[i]`` (see :func:`sample_generators`), so it does not depend on batching.

        Returns ``x_t`` (B, C, F, h, w), ``t`` (B,), ``target`` like x_t, the clean latents ``x0`` (what
        consistency distillation noises its own way) and the keyword inputs
        ``encoder_hidden_states`` (B, L(+N), D), ``image_embeds`` (B, D_img) | None,
        ``conditions`` {name: (B, c, F, H, W)} | None and ``dropout_masks`` {name: (B,) bool}.
        """
        cfg = self.cfg
        cached = "latent_mean" in batch
        if cached:
            mean, std = batch["latent_mean"].to(device), batch.get("latent_std")
            std = None if std is None else std.to(device)
        else:
            pixels = batch["pixels"].to(device)  # (B, 3, F, H, W)
        b = (mean if cached else pixels).shape[0]
        if len(generators) != b:
            raise TFT2VError(f"{len(generators)} generators for a batch of {b}")
        cond_frame = batch.get("cond_frame")
        if branch == "video" and cfg.video_colour_permute:
            if cached:
                raise TFT2VError("recipe.video_colour_permute changes pixels; a data.cache holds latents only")
            pixels, cond_frame = _permute_colours(pixels, cond_frame, generators, device)
        if not cached:
            mean, std = self.autoencoder.posterior(pixels)
        x0 = _per_sample(generators, lambda i, g: self.autoencoder.sample_posterior(
            mean[i : i + 1], None if std is None else std[i : i + 1], g))  # (B, C, F, h, w)
        if cfg.refine.enabled:
            x_t, t, target = self._refine_inputs(pixels, x0, generators, device)
        else:
            s = self.schedule
            share = cfg.video_high_noise_share if branch == "video" else 0.0
            t = _per_sample(generators, lambda i, g: sample_timesteps(
                1, s.num_train_timesteps, g, device, share, cfg.video_high_noise_start))  # (B,)
            noise = _per_sample(generators, lambda i, g: sample_noise((1, *x0.shape[1:]), s.offset_noise, g, device))
            x_t, t, target = noisy_inputs(self.noise_scheduler, x0, s, t=t, noise=noise)

        if cached:
            # Cached tokens are the caption's; text-free samples get the empty-string embedding.
            tokens = batch["text_tokens"].to(device)  # (B, L, D)
            keep = batch["has_text"].to(device).view(b, 1, 1)
            text = torch.where(keep, tokens, self._fixed_text("", device).expand_as(tokens))
        else:
            captions = list(batch["caption"])  # B strings
            if branch == "video":
                # Text-free videos see the empty caption; labelled ones keep theirs (semi-supervised).
                captions = [c if bool(h) else "" for c, h in zip(captions, batch["has_text"])]
            text = self.encoder.encode_text(captions).float().to(device)  # (B, L, D)
        drop = _uniform(generators, device) < cfg.text_dropout  # (B,)
        uncond = self._fixed_text(cfg.negative_prompt if cfg.text_dropout_to == "negative" else "", device)
        text = torch.where(drop.view(b, 1, 1), uncond.expand_as(text), text)

        image_embeds, masks = None, {}
        wants_image = cfg.image_tokens_on_videos if branch == "video" else cfg.image_tokens_on_images
        if wants_image and cached:
            if "image_embed" not in batch:
                raise TFT2VError("data.cache has no image embeddings (built with an encoder without an image tower)")
            image_embeds = batch["image_embed"].to(device)  # (B, D_img): cond frame / the image itself
        elif wants_image:
            frame = cond_frame if branch == "video" else batch["pixels"][:, :, 0]  # (B, 3, H, W)
            image_embeds = self.encoder.encode_image(frame.to(device)).float().to(device)
        if wants_image:
            masks["image"] = _uniform(generators, device) >= cfg.image_token_dropout

        conditions = None
        if cfg.conditions:
            if cached:
                raise TFT2VError("recipe.conditions are extracted from pixels; a data.cache holds latents only")
            conditions = self._conditions(pixels, generators)
        return {"x_t": x_t, "t": t, "target": target, "x0": x0, "encoder_hidden_states": text,
                "image_embeds": image_embeds, "conditions": conditions, "dropout_masks": masks}

    def _refine_inputs(self, pixels: torch.Tensor, x0: torch.Tensor, generators: list[torch.Generator], device):
        """``(x_t, t, target)`` of a refinement stage (:mod:`tft2v.train.refine_step`): the degraded clip's latent,
        shifted towards ``x0`` as t falls, under noise; t in [0, strength·T); the target is ``x0``'s."""
        from tft2v.train import refine_step

        refine, s = self.cfg.refine, self.schedule
        size = refine_step.base_size(refine, *self.data_size, *pixels.shape[-2:])
        mean, std = self.autoencoder.posterior(refine_step.degrade(pixels, size))
        z_low = _per_sample(generators, lambda i, g: self.autoencoder.sample_posterior(
            mean[i : i + 1], None if std is None else std[i : i + 1], g))
        t_end = refine_step.max_timestep(refine, s.num_train_timesteps)
        t = _per_sample(generators, lambda i, g: sample_timesteps(1, t_end, g, device))  # (B,)
        noise = _per_sample(generators, lambda i, g: sample_noise((1, *x0.shape[1:]), s.offset_noise, g, device))
        x_t, effective = refine_step.shifted_inputs(self.noise_scheduler.alphas_cumprod, x0, z_low, noise, t, t_end)
        return x_t, t, prediction_target(self.noise_scheduler, x0, effective, t, s.prediction_type)

    def _conditions(self, pixels: torch.Tensor, generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
        """The recipe's conditions of ``pixels`` (B, 3, F, H, W); each sample's inpainting mask from its generator."""
        from tft2v.data.conditions import extract_conditions, masked_video, random_masks

        names = list(self.cfg.conditions)
        out = extract_conditions(pixels, [n for n in names if n != "masked"], depth_model=self.depth_model)
        if "masked" in names:
            h, w = pixels.shape[-2:]
            mask = _per_sample(generators, lambda i, g: random_masks(1, h, w, generator=g))  # (B, 1, H, W)
            out["masked"] = masked_video(pixels, mask)
        return {name: out[name] for name in names}

    def branch_loss(self, model: Callable, unet, batch: dict, branch: str, generators: list[torch.Generator],
                    device, weight_sum: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted loss of one branch, ``Σ_b w_b·(L_base + λ·L_coh) / weight_sum``, and its logged parts.

        ``model`` is the callable to train (possibly DDP/FSDP-wrapped); ``unet`` the bare
        TFT2VUNet, asked for condition dropout masks; ``generators`` one per sample. ``weight_sum``
        defaults to this batch's ``max(Σ w, 1)``; a trainer that splits a step into micro-batches and
        ranks passes the step's total divided by their number, so every sample weighs the same as in one
        big batch (:func:`step_weight_sums`).
        """
        inp = self.inputs(batch, branch, generators, device)
        masks = inp["dropout_masks"]
        if inp["conditions"] and self.cfg.condition_dropout:
            names = list(inp["conditions"])
            per_sample = [unet.sample_dropout_masks(1, names, g, device=device) for g in generators]
            masks.update({k: torch.cat([m[k] for m in per_sample]) for k in per_sample[0]})
        pred = model(inp["x_t"], inp["t"], encoder_hidden_states=inp["encoder_hidden_states"],
                     image_embeds=inp["image_embeds"], conditions=inp["conditions"], dropout_masks=masks or None)
        base = diffusion_loss(pred, inp["target"])  # (B,)
        coherence = temporal_coherence_loss(pred, inp["target"], reduction="none")  # (B,), 0 for F = 1
        w = self.sample_weights(batch, branch, base.device)
        per_sample = base + self.cfg.coherence_weight * coherence if self.cfg.coherence_weight else base
        n = float(w.sum().clamp(min=1.0)) if weight_sum is None else weight_sum
        loss = (w * per_sample).sum() / n
        weight = self.cfg.video_loss_weight if branch == "video" else self.cfg.image_loss_weight
        logged = {f"{branch}/loss": float(loss.detach()), f"{branch}/base": float((w * base.detach()).sum()) / n}
        if branch == "video":
            logged["video/coherence"] = float((w * coherence.detach()).sum()) / n
        return weight * loss, logged


def step_weight_sums(recipe: Recipe, batches: list[dict], reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                     units: int) -> dict[str, float]:
    """Per branch, ``max(Σ w, 1) / units`` over all micro-batches of a step on all ranks (``reduce_sum``
    sums a (2,) tensor over ranks; ``units`` = micro-batches × ranks): the ``weight_sum`` that makes the
    accumulated, rank-averaged loss equal one batch's weighted mean."""
    local = torch.tensor([sum(float(recipe.sample_weights(b[branch], branch, "cpu").sum())
                              for b in batches if b[branch] is not None) for branch in BRANCHES])
    total = reduce_sum(local)
    return {branch: max(float(total[i]), 1.0) / units for i, branch in enumerate(BRANCHES)}


def sample_generators(seed: int, step: int, branch: str, first: int, count: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample ``first .. first+count-1`` of a (step, branch), on ``device``.

    The sample index counts over the whole optimizer step — (micro-batch · world size + rank) · B + i —
    so every (step, rank, micro-batch, branch, sample) has its own stream, a resumed run draws exactly
    what the uninterrupted one drew, and the draws do not depend on how a step's samples are split into
    micro-batches or ranks (grad_accum 2 × B equals one batch of 2B).
    """
    out = []
    for index in range(first, first + count):
        state = np.random.SeedSequence([seed, step, BRANCHES.index(branch), index]).generate_state(2, np.uint32)
        g = torch.Generator(device=device)
        g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 62 bits, below the 2**63 limit
        out.append(g)
    return out


def _per_sample(generators: list[torch.Generator], draw: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
    """``cat([draw(i, g_i)])`` along the batch: each sample's value comes from its own generator."""
    return torch.cat([draw(i, g) for i, g in enumerate(generators)])


def _permute_colours(pixels: torch.Tensor, cond_frame: torch.Tensor | None,
                     generators: list[torch.Generator], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample i's RGB channels reordered by a permutation from ``generators[i]`` (the same for its
    conditioning frame)."""
    order = _per_sample(generators, lambda i, g: torch.randperm(3, generator=g, device=device)[None])  # (B, 3)
    rows = torch.arange(len(generators), device=device)[:, None]
    if cond_frame is not None:
        cond_frame = cond_frame.to(device)[rows, order]
    return pixels[rows, order], cond_frame


def _uniform(generators: list[torch.Generator], device) -> torch.Tensor:
    """(B,) uniforms in [0, 1), one per sample's generator."""
    return _per_sample(generators, lambda i, g: torch.rand(1, generator=g, device=device))
