"""The consistency-distillation step: a sibling of :class:`tft2v.train.recipe.Recipe` in the same trainer loop.

Batches are the recipe's (``pixels`` (B, 3, F, H, W), F = 1 for images), and so is the conditioning: image–text
pairs go in with their captions (content branch), text-free clips with the empty caption and the CLIP image
tokens of their conditioning frame (motion branch), captioned clips with their captions; ``data.ratio`` and
``data.labelled_ratio`` mix them as in training. The teacher's unconditional branch is the negative prompt
with zero image embeddings (the pipeline's), so a text-free clip is guided by its image tokens and a captioned
sample by its text. Per sample, as VGen's VideoLCM (facts §4.2):

1. ``t_s`` from the teacher's grid (``distill.ddim_steps``, 19…999 for 50), ``t_e = max(t_s − T/N, 0)``;
   ``x_s`` = x0 noised to ``t_s`` with plain Gaussian noise (no offset noise);
2. the student's consistency output ``f_S = c_skip(t_s)·x_s + c_out(t_s)·x̂0_S``;
3. the teacher, CFG ``c + w·(c − u)``, takes one DDIM step to ``x_e``;
4. the target (an EMA of the student, or the student without gradients) gives
   ``f_T = c_skip(t_e)·x_e + c_out(t_e)·x̂0_T``;
5. loss: pseudo-Huber (or L2) between ``f_S`` and ``f_T``.

Every draw comes from the samples' own generators (after the recipe's), so a resumed run is exact. The
recipe's dropout masks (image tokens, conditions) are not used: the teacher, the student and the target see
the same conditioning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tft2v.consistency import DistillConfig, consistency_loss, consistency_output, ddim_grid, ddim_step, x0_and_eps
from tft2v.errors import ConfigError
from tft2v.train.recipe import Recipe, _per_sample


class ConsistencyDistillation:
    """``branch_loss`` / ``sample_weights`` as the recipe's, distilling ``teacher`` (a frozen TFT2VUNet) into
    the trained model; ``target`` is the frozen EMA copy of the student, or None (the student itself)."""

    def __init__(self, cfg: DistillConfig, recipe: Recipe, teacher, target=None):
        self.cfg, self.recipe, self.teacher, self.target = cfg, recipe, teacher, target
        schedule = recipe.schedule
        self.prediction_type = schedule.prediction_type
        self.alphas_cumprod = recipe.noise_scheduler.alphas_cumprod.float()  # (T,)
        self.grid = ddim_grid(schedule.num_train_timesteps, cfg.ddim_steps)  # (N,)
        self.skip = schedule.num_train_timesteps // cfg.ddim_steps
        if self.prediction_type == "epsilon" and float(self.alphas_cumprod[self.grid[-1]]) == 0.0:
            raise ConfigError(f"an ε-prediction model has no x0 at t = {int(self.grid[-1])} of a zero-terminal-SNR "
                              f"schedule; distil a v-prediction model or set schedule.zero_terminal_snr=false")

    def sample_weights(self, batch: dict, branch: str, device) -> torch.Tensor:
        return self.recipe.sample_weights(batch, branch, device)

    def _guidance(self, generators: list[torch.Generator], device) -> torch.Tensor:
        """(B,) CFG weights w: fixed, or uniform in ``distill.guidance_w_range`` per sample."""
        if not self.cfg.learns_guidance:
            return torch.full((len(generators),), self.cfg.guidance_w, device=device)
        lo, hi = self.cfg.guidance_w_range
        return lo + (hi - lo) * _per_sample(generators, lambda i, g: torch.rand(1, generator=g, device=device))

    def _teacher_prediction(self, x: torch.Tensor, t: torch.Tensor, inp: dict, w: torch.Tensor) -> torch.Tensor:
        """``c + w·(c − u)``, cond and uncond in one batched forward; uncond: the negative prompt, zero
        image embeddings, the same conditions (as the pipeline samples)."""
        text = inp["encoder_hidden_states"]  # (B, L, D)
        negative = self.recipe._fixed_text(self.recipe.cfg.negative_prompt, x.device).expand_as(text)
        image = inp["image_embeds"]
        conditions = inp["conditions"]
        out = self.teacher(
            torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, text]),
            image_embeds=None if image is None else torch.cat([torch.zeros_like(image), image]),
            conditions=None if conditions is None else {k: torch.cat([v, v]) for k, v in conditions.items()})
        u, c = out.float().chunk(2)
        return c + w.view(-1, 1, 1, 1, 1) * (c - u)

    def _target_prediction(self, unet, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        if self.target is not None:
            return self.target(x, t, **kwargs)
        was_training = unet.training
        unet.eval()  # the student as its own target: without dropout, as it samples
        try:
            return unet(x, t, **kwargs)
        finally:
            unet.train(was_training)

    def branch_loss(self, model: Callable, unet, batch: dict, branch: str, generators: list[torch.Generator],
                    device, weight_sum: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted consistency loss of one branch, ``Σ_b w_b·d(f_S, f_T) / weight_sum``, and its logged parts
        (arguments as :meth:`Recipe.branch_loss`)."""
        inp = self.recipe.inputs(batch, branch, generators, device)
        x0 = inp["x0"]  # (B, C, F, h, w)
        n_grid = len(self.grid)
        index = _per_sample(generators, lambda i, g: torch.randint(0, n_grid, (1,), generator=g, device=device))
        noise = _per_sample(generators, lambda i, g: torch.randn((1, *x0.shape[1:]), generator=g, device=device))
        w = self._guidance(generators, device)  # (B,)
        t_s = self.grid.to(device)[index]  # (B,)
        t_e = (t_s - self.skip).clamp(min=0)
        ac = self.alphas_cumprod.to(device)
        a_s, a_e = ac[t_s], ac[t_e]
        x_s = ddim_step(x0, noise, a_s)  # √ᾱ·x0 + √(1−ᾱ)·ε: the forward process at t_s
        kwargs = {"encoder_hidden_states": inp["encoder_hidden_states"], "image_embeds": inp["image_embeds"],
                  "conditions": inp["conditions"]}
        student_kwargs = {**kwargs, "guidance": w} if self.cfg.learns_guidance else kwargs
        pred = model(x_s, t_s, **student_kwargs)
        scaling = self.cfg.timestep_scaling
        f_student = consistency_output(x_s, x0_and_eps(pred.float(), x_s, a_s, self.prediction_type)[0], t_s, scaling)
        with torch.no_grad():
            guided = self._teacher_prediction(x_s, t_s, kwargs, w)
            x_e = ddim_step(*x0_and_eps(guided, x_s, a_s, self.prediction_type), a_e)
            target_pred = self._target_prediction(unet, x_e, t_e, student_kwargs).float()
            f_target = consistency_output(x_e, x0_and_eps(target_pred, x_e, a_e, self.prediction_type)[0], t_e,
                                          scaling)
        per_sample = consistency_loss(f_student, f_target, self.cfg.loss, self.cfg.huber_c)  # (B,)
        weights = self.sample_weights(batch, branch, per_sample.device)
        n = float(weights.sum().clamp(min=1.0)) if weight_sum is None else weight_sum
        loss = (weights * per_sample).sum() / n
        r = self.recipe.cfg
        scale = r.video_loss_weight if branch == "video" else r.image_loss_weight
        return scale * loss, {f"{branch}/loss": float(loss.detach())}

