"""``tft2v generate``: text (+ compositional conditions) → video files from a model folder.

Condition videos and the ``--local-image`` still are read by :mod:`tft2v.condition_io` (uint8 ``(F, H, W, 3)``
at the I/O edge → ``(1, 3, F, H, W)`` in [-1, 1], a still held over F) — as the web UI reads uploads — and
passed to the pipeline, which extracts each condition with the same extractors training uses
(:func:`tft2v.data.conditions.extract_conditions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import TFT2VError

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# CLI flag → condition name; each takes a video whose frames the condition is extracted from.
CONDITION_FLAGS = {"sketch": "sketch", "depth": "depth", "motion": "motion", "single_sketch": "single_sketch",
                   "masked": "masked"}

EXAMPLES = """Examples:

  tft2v generate --model runs/toy/model "a red circle moving left" --out circle.mp4

  tft2v generate --model models/tft2v "a corgi surfing" --steps 25 --scheduler dpmpp --dtype fp16 --seed 7 --num-videos 2 --out corgi.mp4

  tft2v generate --model models/vcomposer "a wooden house" --sketch house.mp4 --out house.gif

  tft2v generate --model models/vcomposer "a forest" --depth walk.mp4 --depth-model midas.pt --out frames/

  tft2v generate --model runs/toy/model --prompts prompts.txt --out videos/out.mp4
  tft2v generate --model runs/toy/model "a red circle" --lora runs/mine/lora:0.8 --out mine.mp4
  tft2v generate --model runs/toy-lcm/model "a red circle" --out fast.mp4     # distilled: 4 steps, no CFG pass
"""


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """The positional prompt and/or a file with one prompt per line (blank and ``#`` lines skipped)."""
    prompts = [prompt] if prompt else []
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise TFT2VError(f"prompts file {prompts_file} not found")
        try:
            lines = prompts_file.read_text().splitlines()
        except UnicodeDecodeError:
            raise TFT2VError(f"prompts file {prompts_file} is not UTF-8 text") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise TFT2VError(f"prompts file {prompts_file} holds no prompts")
        prompts += from_file
    if not prompts:
        raise TFT2VError("give a prompt, e.g. tft2v generate --model DIR \"a red circle\", or --prompts FILE")
    return prompts


def output_paths(out: Path, num_prompts: int, num_videos: int) -> list[Path]:
    """One path per video: ``out`` itself for a single video, else ``stem_P_K.suffix`` (or ``DIR/P_K``)."""
    suffix = out.suffix.lower()
    if suffix not in ("", ".mp4", ".gif"):
        raise TFT2VError(f"--out {out}: use a .mp4 or .gif file, or a directory for PNG frames")
    if num_prompts * num_videos == 1:
        return [out]
    names = [f"{p:03d}_{k:02d}" for p in range(num_prompts) for k in range(num_videos)]
    if suffix == "":
        return [out / name for name in names]
    return [out.with_name(f"{out.stem}_{name}{out.suffix}") for name in names]


def read_file_option(path: Path, flag: str, kind: str, read, *args, **kwargs):
    """Check that ``--flag``'s file exists, then ``read(path, *args, error=...)`` it (see
    :mod:`tft2v.condition_io`) with errors worded for this flag."""
    option = f"--{flag.replace('_', '-')}"
    if not path.is_file():
        raise TFT2VError(f"{option} {kind} {path} not found")
    return read(path, *args, error=f"cannot read {option} {kind} {path}", **kwargs)


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """``PATH[:SCALE]`` → (path, scale); a trailing ``:`` part that is not a number belongs to the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def generate(
    prompt: Optional[str] = typer.Argument(None, help="The text prompt."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (tft2v train / tft2v convert output)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="File with one prompt per line."),
    negative_prompt: Optional[str] = typer.Option(None, help="Unconditional prompt (default: the model's, VGen's)."),
    frames: Optional[int] = typer.Option(None, min=1, help="Frames per video (default: the model's)."),
    height: Optional[int] = typer.Option(None, min=1, help="Height in pixels (default: the model's)."),
    width: Optional[int] = typer.Option(None, min=1, help="Width in pixels (default: the model's)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps (default: the model's: 50, or 4 for a "
                                        "distilled model, tft2v distill / convert vgen --videolcm)."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="Classifier-free guidance scale (default: the "
                                             "model's: 9, or 1 = no CFG pass for a distilled model)."),
    guidance_w: Optional[float] = typer.Option(None, "--guidance-w", min=0.0, help="The CFG weight w a distilled "
                                               "model with a learnt guidance embedding is asked for (default: "
                                               "its own)."),
    seed: int = typer.Option(0, min=0, max=2**63 - 1, help="Seed; video i uses seed+i."),
    num_videos: int = typer.Option(1, "--num-videos", min=1, help="Videos per prompt."),
    scheduler: Optional[str] = typer.Option(None, help="ddim (VGen), dpmpp (fast), lcm (a distilled model's own, "
                                            "its default) or a diffusers scheduler class."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)."),
    offload: bool = typer.Option(False, "--offload", help="Model CPU offload: only the running part on the GPU."),
    decode_chunk: int = typer.Option(2, min=1, help="Frames per autoencoder decode call."),
    sketch: Optional[Path] = typer.Option(None, help="Video to extract a sketch (edge) condition from."),
    depth: Optional[Path] = typer.Option(None, help="Video to extract a depth condition from (needs --depth-model)."),
    depth_model: Optional[str] = typer.Option(None, help="TorchScript depth network file, or 'luminance'."),
    motion: Optional[Path] = typer.Option(None, help="Video to extract a motion-vector condition from."),
    single_sketch: Optional[Path] = typer.Option(None, help="Video whose first frame's sketch conditions all frames."),
    masked: Optional[Path] = typer.Option(None, help="Video to inpaint/outpaint (masked-video condition)."),
    local_image: Optional[Path] = typer.Option(None, help="Image (or video) kept as the first-frame condition."),
    image: Optional[Path] = typer.Option(None, help="Image whose CLIP embedding adds image tokens."),
    condition_fps: float = typer.Option(8.0, min=0.01, help="Frame rate condition videos are sampled at."),
    fps: Optional[int] = typer.Option(None, min=1, help="Output frame rate (default: the model's, 8)."),
    out: Path = typer.Option(Path("out.mp4"), "--out", "-o", help="out.mp4, out.gif, or a directory for PNGs."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help="LoRA adapter folder (tft2v finetune output), "
                                             "optionally :SCALE (default 1); repeat to mix adapters."),
    refine: Optional[Path] = typer.Option(None, "--refine", help="A refinement model folder (VGen's SR600): also "
                                          "write each video refined to its size, as <out>_refined."),
    refine_strength: float = typer.Option(0.7, help="With --refine: how far to invert, in (0, 1]."),
    refine_steps: int = typer.Option(30, min=1, help="With --refine: inversion and sampling steps."),
) -> None:
    """Generate videos from text with a tft2v model folder (optionally with sketch/depth/motion/… conditions
    extracted from your own videos)."""
    import torch

    from tft2v import export_video
    from tft2v.condition_io import hold_still, read_condition_video, read_still
    from tft2v.pipeline import TFT2VPipeline

    prompts = read_prompts(prompt, prompts_file)
    paths = output_paths(out, len(prompts), num_videos)
    if dtype not in DTYPES:
        raise TFT2VError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if depth is not None and depth_model is None:
        raise TFT2VError("--depth needs --depth-model PATH (a TorchScript depth network) or --depth-model luminance")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise TFT2VError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, …)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TFT2VError(f"--device {device} asked for CUDA, but no CUDA GPU is available")

    pipe = TFT2VPipeline.from_pretrained(model, torch_dtype=getattr(torch, DTYPES[dtype]))
    refiner = None
    if refine is not None:  # loaded before generating: a bad folder fails before minutes of sampling
        from tft2v.refine_pipeline import TFT2VRefinePipeline, frame_plan

        if not (refine / "model_index.json").is_file():
            raise TFT2VError(f"--refine {refine} is not a model folder (no model_index.json)")
        refiner = TFT2VRefinePipeline.from_pretrained(refine, torch_dtype=getattr(torch, DTYPES[dtype]))
        refiner.enable_model_cpu_offload(device) if offload else refiner.to(device)
    for spec in lora or []:
        path, scale = parse_lora_spec(spec)
        name = pipe.load_lora_weights(path, scale=scale)
        typer.echo(f"LoRA {name}: {path} at scale {scale:g}")
    if scheduler is not None:
        pipe.set_scheduler(scheduler)
    pipe.enable_model_cpu_offload(device) if offload else pipe.to(device)
    d = pipe.defaults
    num_frames, size = frames or d["num_frames"], (height or d["height"], width or d["width"])
    double = refiner is not None and frame_plan(num_frames, refiner.defaults["num_frames"], "--frames: the video")
    given = {"sketch": sketch, "depth": depth, "motion": motion, "single_sketch": single_sketch, "masked": masked}
    videos = {CONDITION_FLAGS[flag]: read_file_option(path, flag, "video", read_condition_video, num_frames,
                                                      condition_fps, size)
              for flag, path in given.items() if path is not None}
    if local_image is not None:  # held over F frames; the pipeline's extractor keeps the first (as the web UI)
        still = read_file_option(local_image, "local_image", "image", read_still, size, video_first_frame=True)
        videos["local_image"] = hold_still(still, num_frames)
    clip_image = read_file_option(image, "image", "image", read_still, size, video_first_frame=True) \
        if image is not None else None

    index = 0
    for p, text in enumerate(prompts):
        generators = [torch.Generator().manual_seed(seed + index + k) for k in range(num_videos)]
        result = pipe(text, negative_prompt=negative_prompt, num_frames=num_frames, height=size[0], width=size[1],
                      num_inference_steps=steps, guidance_scale=guidance, guidance_w=guidance_w, generator=generators,
                      condition_videos=videos or None, depth_model=depth_model,
                      image=clip_image, num_videos_per_prompt=num_videos, decode_chunk_size=decode_chunk,
                      output_type="uint8")
        for k in range(num_videos):
            written = export_video(result[k], paths[index], fps=fps or d["fps"])
            typer.echo(f"wrote {written}  (prompt {p + 1}/{len(prompts)}, seed {seed + index}): {text}")
            if refiner is not None:
                clip = torch.from_numpy(result[k]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
                refined = refiner(clip, text, strength=refine_strength, num_inference_steps=refine_steps,
                                  generator=torch.Generator(device=refiner.execution_device).manual_seed(seed + index),
                                  output_type="uint8", double_frames=double)
                target = paths[index].with_name(f"{paths[index].stem}_refined{paths[index].suffix}")
                typer.echo(f"wrote {export_video(refined[0], target, fps=fps or d['fps'])}  (refined)")
            index += 1
