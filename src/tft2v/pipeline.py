"""TFT2VPipeline: text (+ image, + compositional conditions) → video, diffusers-pipeline style.

Layout: tensors are ``(B, C, F, H, W)`` throughout; ``output_type="np"``/``"uint8"`` return the I/O
edge layout ``(B, F, H, W, 3)``. The model folder format is in :mod:`tft2v.pipeline_folder`.

It follows diffusers' ``DiffusionPipeline`` conventions (``from_pretrained``/``save_pretrained``,
``.to(device, dtype)``, numbered steps in ``__call__``, ``set_progress_bar_config``) by hand rather
than subclassing it: DiffusionPipeline's component bookkeeping (``device``, ``components``, loading)
assumes every component is a diffusers/transformers class, which our encoders and the pixel-space
autoencoder are not.

Memory switches (VGen could not run on 8–12 GB GPUs):
* ``pipe.to(dtype=torch.float16 | torch.bfloat16)`` — half-precision weights (latents and the
  scheduler stay float32);
* ``pipe.vae_decode_chunk_size = n`` (or ``decode_chunk_size=`` per call) — frames per VAE decode
  call (VGen: 2);
* ``pipe.enable_unet_batch_chunking(n)`` — at most ``n`` videos per UNet forward, so classifier-free
  guidance runs cond and uncond one after the other instead of as one doubled batch;
* ``pipe.enable_model_cpu_offload(device)`` — components live on the CPU and each moves to ``device``
  only while it runs (encoder → UNet → autoencoder), so only the UNet occupies the GPU while denoising.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tft2v.errors import ConfigError, TFT2VError
from tft2v.pipeline_inputs import (check_call, encode_image, encode_prompts, guidance_input, postprocess,
                                   prepare_conditions, prepare_latents)
from tft2v.pipeline_folder import (COMPONENTS, component_dir, load_scheduler, load_unet, read_index, unet_dir,
                                   write_index)
from tft2v.sampling import denoise

VGEN_NEGATIVE_PROMPT = (
    "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
    "disconnected limbs, Ugly faces, incomplete arms"
)
# VGen's inference settings (facts §1.3): 16 frames at 448×256, DDIM 50 steps, guidance 9, 8 fps.
DEFAULTS = {
    "num_frames": 16,
    "height": 256,
    "width": 448,
    "fps": 8,
    "negative_prompt": VGEN_NEGATIVE_PROMPT,
    "positive_prompt": "",
    "guidance_scale": 9.0,
    "num_inference_steps": 50,
    "stage": "generate",  # "refine": a refinement stage (TFT2VRefinePipeline), which does not generate from noise
    # A distilled model that learnt a guidance embedding (tft2v distill with distill.guidance_w_range): the CFG
    # weight w it is asked for; its folder holds the default. None: the model has no such embedding.
    "guidance_w": None,
}

# The adapter a LoRA run's model folder applies to its base on load (tft2v.pipeline_folder).
MODEL_ADAPTER = "model"
# A distilled model's LCMScheduler settings that belong to the model (its teacher grid), not to the sampler.
LCM_GRID = ("original_inference_steps", "timestep_scaling")


def type_name(scheduler: str) -> str:
    """The diffusers class a scheduler name (alias or class name) stands for."""
    from tft2v.sampling import SCHEDULER_ALIASES

    return SCHEDULER_ALIASES.get(scheduler, scheduler)


class TFT2VPipeline:
    """UNet + sampling scheduler + text/image encoder + (pixel-space or KL) autoencoder."""

    def __init__(self, unet, scheduler, encoder, autoencoder, defaults: dict | None = None):
        unknown = sorted(set(defaults or {}) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown pipeline default(s) {unknown}; known: {sorted(DEFAULTS)}")
        self.unet, self.scheduler, self.encoder, self.autoencoder = unet, scheduler, encoder, autoencoder
        # A distilled model's folder holds its LCMScheduler: the model is few-step (1–8 steps, no CFG pass by
        # default), and the scheduler's teacher grid belongs to the model, whichever sampler is set later.
        self.few_step = type(scheduler).__name__ == "LCMScheduler"
        self._lcm_grid = {k: scheduler.config[k] for k in LCM_GRID} if self.few_step else {}
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.vae_decode_chunk_size = 2
        self.unet_batch_chunk: int | None = None
        self._offload_device: torch.device | None = None
        self._progress_kwargs: dict = {}

    @property
    def is_refiner(self) -> bool:
        """A refinement stage: a folder recording ``stage: refine`` (a ``recipe.refine`` run), or VGen's SR600
        layout (converted folders)."""
        return self.defaults["stage"] == "refine" or bool(self.unet.config.get("refiner_layout"))

    # -- folder I/O ---------------------------------------------------------------------------

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in COMPONENTS}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model folder (see :mod:`tft2v.pipeline_folder`); absent components are recorded as such."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, component in self.components.items():
            if component is not None:
                if name == "scheduler":
                    component.save_config(str(directory / name))
                else:
                    component.save_pretrained(directory / name)
        write_index(directory, self.components, self.defaults)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, **components) -> "TFT2VPipeline":
        """Load a model folder; ``unet=``/``scheduler=``/``encoder=``/``autoencoder=`` replace (or supply
        missing) components, as in diffusers. A LoRA run's folder gives its base UNet with the run's adapter
        applied (adapter ``"model"``; more mix in with :meth:`load_lora_weights`)."""
        from tft2v.autoencoder import load_autoencoder
        from tft2v.encoders import load_encoder

        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"unknown pipeline component(s) {unknown}; known: {list(COMPONENTS)}")
        index = read_index(directory)
        loaders = {"unet": load_unet, "scheduler": load_scheduler,
                   "encoder": load_encoder, "autoencoder": load_autoencoder}
        folders = {name: unet_dir(directory, index) if name == "unet" else component_dir(directory, index, name)
                   for name in COMPONENTS if name not in components}
        loaded = {name: components[name] if name in components else loaders[name](folders[name]) for name in COMPONENTS}
        pipe = cls(**loaded, defaults={k: v for k, v in index.get("tft2v", {}).items() if k in DEFAULTS})
        pipe.check_components()
        adapter = (index.get("lora") or {}).get("adapter")
        if adapter and "unet" not in components:  # a LoRA run's model folder: its adapter on the base UNet
            pipe.load_lora_weights(Path(directory) / adapter, adapter_name=MODEL_ADAPTER)
        return pipe.to(device=device, dtype=torch_dtype)

    def check_components(self) -> None:
        """The encoder's and autoencoder's sizes must be what the UNet was built for."""
        c = self.unet.config
        if self.encoder.text_dim != c.context_dim:
            raise TFT2VError(f"the encoder gives {self.encoder.text_dim}-d text tokens but the UNet expects "
                             f"context_dim {c.context_dim}")
        if self.autoencoder.latent_channels != c.in_channels:
            raise TFT2VError(f"the autoencoder has {self.autoencoder.latent_channels} latent channels but the UNet "
                             f"expects {c.in_channels}")

    # -- device, dtype, memory switches ----------------------------------------------------------

    def _modules(self):
        return [m for m in (self.unet, self.encoder, self.autoencoder) if isinstance(m, torch.nn.Module)]

    def to(self, device: str | torch.device | torch.dtype | None = None,
           dtype: torch.dtype | None = None) -> "TFT2VPipeline":
        """Move/cast every component, diffusers style: ``pipe.to("cuda")``, ``pipe.to(torch.float16)``."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise ConfigError(f"pipeline dtype must be a floating-point dtype, got {dtype}")
        if device is not None and self._offload_device is not None:
            raise TFT2VError("model CPU offload is on; call disable_model_cpu_offload() before .to(device)")
        args = [a for a in (device, dtype) if a is not None]
        for module in self._modules() if args else []:
            # nn.Module.to directly: diffusers' ModelMixin.to warns on every dtype cast of a model
            # without fp32-pinned modules, which ours has none of.
            torch.nn.Module.to(module, *args)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def execution_device(self) -> torch.device:
        """Where the computation runs: the offload target when CPU offload is on, else the UNet's device."""
        return self._offload_device or self.unet.device

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep components on the CPU; each moves to ``device`` only while it runs."""
        self._offload_device = torch.device(device)
        for module in self._modules():
            module.to("cpu")

    def disable_model_cpu_offload(self) -> None:
        self._offload_device = None

    def enable_vae_tiling(self) -> None:
        """Encode and decode each frame in overlapping spatial tiles (diffusers' AutoencoderKL tiling): the
        VAE's memory stops growing with the frame size (1280x720 refinement); seams are blended."""
        vae = getattr(self.autoencoder, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            raise TFT2VError("VAE tiling needs a KL autoencoder; this pipeline works in pixel space")
        vae.enable_tiling()

    def enable_unet_batch_chunking(self, chunk: int = 1) -> None:
        """Run at most ``chunk`` videos per UNet forward (CFG cond/uncond sequentially for chunk ≤ B)."""
        if not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"UNet batch chunk must be a positive integer, got {chunk!r}")
        self.unet_batch_chunk = chunk

    def disable_unet_batch_chunking(self) -> None:
        self.unet_batch_chunk = None

    @contextlib.contextmanager
    def _placed(self, module):
        """Run ``module`` on the execution device; with CPU offload it goes back to the CPU afterwards."""
        if self._offload_device is not None and isinstance(module, torch.nn.Module):
            module.to(self._offload_device)
            try:
                yield module
            finally:
                module.to("cpu")
                if self._offload_device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            yield module

    @property
    def noise_schedule(self):
        """The :class:`tft2v.diffusion.ScheduleConfig` (betas, zero terminal SNR, prediction type) the
        scheduler holds — the model's training schedule."""
        from tft2v.diffusion import ScheduleConfig

        c = self.scheduler.config
        return ScheduleConfig(
            num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
            beta_schedule=c.beta_schedule, zero_terminal_snr=bool(c.get("rescale_betas_zero_snr", False)),
            prediction_type=c.prediction_type,
        )

    def set_scheduler(self, name: str) -> "TFT2VPipeline":
        """Switch the sampler: ``"ddim"`` (VGen), ``"dpmpp"`` (DPM-Solver++ 2M), ``"lcm"`` (a distilled model)
        or a diffusers class name; the noise schedule (betas, zero terminal SNR, prediction type) is kept, and
        so is a distilled model's consistency grid (``original_inference_steps``, ``timestep_scaling``)."""
        from tft2v.sampling import build_scheduler

        grid = self._lcm_grid if type_name(name) == "LCMScheduler" else {}
        self.scheduler = build_scheduler(name, self.noise_schedule, **grid)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm keyword arguments for the denoising progress bar (``disable=True`` silences it)."""
        self._progress_kwargs = kwargs

    # -- LoRA adapters (tft2v.models.lora; diffusers-style names) ---------------------------------

    def load_lora_weights(self, path: str | Path, adapter_name: str | None = None, scale: float = 1.0) -> str:
        """Load an adapter folder (``tft2v finetune`` / a LoRA run's checkpoint ``lora/``) into the UNet as
        ``adapter_name`` (default: ``adapter_<n>``) and activate it beside those already active. An
        adapter made for another base model is refused. New caption words the adapter was trained with
        (``encoder_words``) are added to the toy text encoder (old prompts encode as before). Returns the
        adapter name."""
        from tft2v.models import lora

        words = lora.read_adapter(path)[0].get("encoder_words") or []
        if words and not hasattr(self.encoder, "add_words"):
            raise lora.LoraError(f"LoRA adapter {path} adds the words {words} to the toy text encoder; this "
                                 f"model's encoder is {getattr(self.encoder, 'kind', type(self.encoder).__name__)!r}")

        if getattr(self, "_lora_base", None) is None:
            self._lora_base = lora.base_fingerprint(self.unet)  # before any fuse changes the weights
            self._lora_active: dict[str, float] = {}
        known = getattr(self.unet, "_tft2v_lora", {})
        name = adapter_name or f"adapter_{len(known)}"
        device, dtype = self.unet.device, self.unet.dtype
        lora.load_adapter(self.unet, path, name, fingerprint=self._lora_base)
        torch.nn.Module.to(self.unet, device=device, dtype=dtype)  # the new adapter too; no ModelMixin warning
        if words:
            self.encoder.add_words(words)
        self.set_adapters([*self._lora_active, name], [*self._lora_active.values(), scale])
        return name

    def set_adapters(self, adapter_names: list[str] | str, weights: list[float] | float | None = None) -> None:
        """Activate these adapters (others off), each scaled by its weight (default 1)."""
        from tft2v.models import lora

        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if weights is not None and not isinstance(weights, (list, tuple)):
            weights = [weights] * len(names)
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        lora.set_adapters(self.unet, names, weights)
        self._lora_active = dict(zip(names, weights))

    def get_active_adapters(self) -> dict[str, float]:
        return dict(getattr(self, "_lora_active", {}))

    def fuse_lora(self, adapter_names: list[str] | None = None) -> None:
        """Merge the (active, or named) adapters at their current weights into the base weights."""
        from tft2v.models import lora

        lora.fuse(self.unet, adapter_names or list(self.get_active_adapters()))

    def unfuse_lora(self) -> None:
        from tft2v.models import lora

        lora.unfuse(self.unet)

    # -- generation -----------------------------------------------------------------------------

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        """The UNet as a sampling model_fn; splits the batch when batch chunking is on."""
        chunk = self.unet_batch_chunk or x.shape[0]
        if chunk >= x.shape[0]:
            return self.unet(x, t, **inputs)
        outs = []
        for start in range(0, x.shape[0], chunk):
            part = slice(start, start + chunk)
            outs.append(self.unet(x[part], t[part], **_slice_inputs(inputs, part)))
        return torch.cat(outs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        conditions: dict[str, torch.Tensor] | None = None,
        condition_videos: dict[str, torch.Tensor] | None = None,
        depth_model=None,
        image: torch.Tensor | None = None,
        num_videos_per_prompt: int = 1,
        decode_chunk_size: int | None = None,
        callback=None,
        guidance_w: float | None = None,
    ):
        """Generate videos.

        ``None`` for negative_prompt, num_frames, height, width, num_inference_steps or guidance_scale means
        the model folder's default; any other bad value (0 steps, negative guidance, …) is a TFT2VError.
        prompt: one string or a list of B strings (each gets ``num_videos_per_prompt`` videos);
        conditions: {name: (1 or B, c, F, H, W)} ready condition videos (see tft2v.models.CONDITION_CHANNELS);
        condition_videos: {name: (1 or B, 3, F, H, W) in [-1, 1]} raw videos to extract each condition
        from with the training extractors (``depth_model`` for "depth");
        image: (1 or B, 3, H, W) in [-1, 1] → CLIP image tokens (uncond: a zero embedding, as VGen);
        generator: one, or one per video (then each video is independent of the batch it is in);
        callback(i, n, latents) after each step; guidance_w: the CFG weight w for a distilled model that learnt
        a guidance embedding (default: its folder's). A distilled (few-step) folder defaults to its step count
        and guidance_scale 1 — one UNet call per step, no CFG pass. Returns ``"np"`` float (B, F, H, W, 3) in [0, 1],
        ``"uint8"`` (B, F, H, W, 3), or ``"pt"`` (B, 3, F, H, W) in [-1, 1].
        """
        d = self.defaults

        def pick(value, key):
            return d[key] if value is None else value

        # 1. Check inputs, fill defaults from the model folder.
        args = check_call(
            self, prompt, pick(negative_prompt, "negative_prompt"), pick(num_frames, "num_frames"),
            pick(height, "height"), pick(width, "width"), pick(num_inference_steps, "num_inference_steps"),
            pick(guidance_scale, "guidance_scale"), output_type, num_videos_per_prompt,
            self.vae_decode_chunk_size if decode_chunk_size is None else decode_chunk_size, generator,
        )
        device = self.execution_device
        use_cfg = args.guidance_scale != 1.0
        # 2. Encode the prompt and the negative prompt (the unconditional branch), and the image.
        with self._placed(self.encoder):
            text, negative = encode_prompts(self.encoder, args, d["positive_prompt"], use_cfg)
            image_embeds = encode_image(self, image, args.batch) if image is not None else None
        cond_maps = prepare_conditions(self, conditions, condition_videos, depth_model, args)
        cond = {"encoder_hidden_states": text.to(device)}
        uncond = {"encoder_hidden_states": negative.to(device)} if use_cfg else None
        w = guidance_input(self, pick(guidance_w, "guidance_w"), args.batch, device)
        if w is not None:
            cond["guidance"] = w
            if uncond is not None:
                uncond["guidance"] = w
        if image_embeds is not None:
            cond["image_embeds"] = image_embeds.to(device)
            if uncond is not None:
                uncond["image_embeds"] = torch.zeros_like(cond["image_embeds"])
        if cond_maps:
            cond["conditions"] = {k: v.to(device) for k, v in cond_maps.items()}
            if uncond is not None:  # VGen: the spatial conditions are identical in cond and uncond
                uncond["conditions"] = cond["conditions"]
        # 3. Prepare the initial noise.
        x_T = prepare_latents(self, args, generator, latents, device)
        # 4. Denoise with classifier-free guidance (cond/uncond batched in one forward).
        with self._placed(self.unet), tqdm(total=args.steps, **{"desc": "denoising", **self._progress_kwargs}) as bar:
            def on_step(i, n, x):
                bar.update(1)
                if callback is not None:
                    callback(i, n, x)

            x_0 = denoise(self._model_fn, self.scheduler, x_T, cond, uncond, args.guidance_scale, args.steps,
                          generator if isinstance(generator, torch.Generator) else None, on_step)
        # 5. Decode latents to pixels, a few frames at a time.
        with self._placed(self.autoencoder):  # decode() moves the latents to the VAE's device/dtype
            video = self.autoencoder.decode(x_0, chunk_size=args.decode_chunk_size)
        # 6. Post-process to the requested output type.
        return postprocess(video, args.output_type)


def _slice_inputs(inputs: dict, part: slice) -> dict:
    """Take batch rows ``part`` of every tensor in the UNet keyword inputs (nested condition dicts too)."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out[key] = {n: v[part] for n, v in value.items()}
        elif isinstance(value, torch.Tensor) and value.shape[0] > 1:
            out[key] = value[part]
        else:
            out[key] = value
    return out
