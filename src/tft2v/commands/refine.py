"""``tft2v refine``: a video → the same video refined by a refinement model folder (VGen's 1280x720 SR600)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import TFT2VError

EXAMPLES = ("Example:  tft2v refine clip_448x256.mp4 --model models/tft2v-sr600 --prompt \"a dog running on the "
            "beach\" --out clip_720p.mp4")


def read_frames(path: Path, max_frames: int) -> "torch.Tensor":
    """Every decoded frame (stride 1, as VGen reads the base video), at most ``max_frames``, as
    (1, 3, F, H, W) in [-1, 1]; a file that cannot be decoded is a one-line error."""
    import av
    import numpy as np
    import torch

    if not path.is_file():
        raise TFT2VError(f"input video {path} not found")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise TFT2VError(f"input video {path} has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == max_frames:
                    break
    except av.FFmpegError as err:
        raise TFT2VError(f"input video {path} cannot be decoded: {str(err).splitlines()[0]}") from None
    if not frames:
        raise TFT2VError(f"input video {path} holds no frames")
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def refine(
    video: Path = typer.Argument(..., help="The video to refine (e.g. a 448x256 tft2v generate output)."),
    model: Path = typer.Option(..., "--model", help="A refinement model folder (tft2v convert vgen "
                               "sr_step_*.pth, or a recipe.refine run's model/)."),
    prompt: str = typer.Option(..., "--prompt", help="What the video shows (the caption it was made from)."),
    out: Path = typer.Option(..., "--out", help="Output .mp4 or .gif file, or a directory for PNG frames."),
    strength: float = typer.Option(0.7, help="How far to invert, in (0, 1]: 0.7 reaches t = 699 (VGen)."),
    height: Optional[int] = typer.Option(None, min=1, help="Output height (default: the folder's, 720)."),
    width: Optional[int] = typer.Option(None, min=1, help="Output width (default: the folder's, 1280)."),
    steps: int = typer.Option(30, min=1, help="Inversion and sampling steps."),
    guidance: float = typer.Option(9.0, min=0.0, help="Classifier-free guidance scale."),
    guidance_rescale: float = typer.Option(0.3, min=0.0, max=1.0, help="Guidance rescale (0: plain CFG)."),
    negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt (default: the folder's)."),
    seed: int = typer.Option(0, help="Seed of the VAE posterior sample and the SDE noise."),
    fps: float = typer.Option(8.0, min=0.1, help="Frame rate of the written video."),
    device: Optional[str] = typer.Option(None, help="cpu / cuda (default: cuda when available)."),
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="Keep each component on the CPU until used."),
) -> None:
    """Refine VIDEO with a refinement model (DDIM inversion + DPM-Solver++ SDE); writes --out."""
    import torch

    from tft2v.refine_pipeline import TFT2VRefinePipeline, frame_plan
    from tft2v.video_export import export_video

    if out.suffix.lower() not in ("", ".mp4", ".gif"):
        raise TFT2VError(f"--out {out}: use a .mp4 or .gif file, or a directory for PNG frames")
    if not (model / "model_index.json").is_file():
        raise TFT2VError(f"--model {model} is not a model folder (no model_index.json)")
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TFT2VRefinePipeline.from_pretrained(model)
    if cpu_offload:
        pipe.enable_model_cpu_offload(target)
    else:
        pipe.to(target)
    frames = pipe.defaults["num_frames"]
    clip = read_frames(video, frames)
    double = frame_plan(clip.shape[2], frames, f"input video {video}")
    generator = torch.Generator(device=pipe.execution_device).manual_seed(seed)
    result = pipe(clip, prompt, negative_prompt=negative_prompt, strength=strength, height=height, width=width,
                  num_inference_steps=steps, guidance_scale=guidance, guidance_rescale=guidance_rescale,
                  generator=generator, output_type="uint8", double_frames=double)
    typer.echo(f"wrote {export_video(result[0], out, fps=fps)}")
