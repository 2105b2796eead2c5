"""The ``tft2v serve`` web UI: a Gradio Blocks app around one loaded :class:`TFT2VPipeline`.

Layout: the pipeline works on ``(B, C, F, H, W)`` tensors; this module is an I/O edge — uploaded
condition videos are read as uint8 ``(F, H, W, 3)``, condition images as uint8 ``(H, W, 3)``, and the
result leaves as an mp4 file.

Requests run one at a time through Gradio's queue (one model, one device); the denoising callback
drives ``gr.Progress``. Nothing here talks to the network: analytics are off, no share links, and the
theme uses system fonts so the page loads no web fonts.
"""

from __future__ import annotations

import os

# Set before gradio is imported anywhere: its analytics and version check read this at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from tft2v.errors import TFT2VError  # noqa: E402

SCHEDULERS = ("ddim", "dpmpp")
# A distilled (few-step) model samples with its consistency sampler by default; ddim / dpmpp stay on offer.
FEW_STEP_SCHEDULERS = ("lcm", *SCHEDULERS)


def model_schedulers(pipe) -> tuple[str, ...]:
    """The samplers the UI offers for ``pipe``, its default first."""
    return FEW_STEP_SCHEDULERS if pipe.few_step else SCHEDULERS
# Conditions a user can supply as a source video; the UI extracts them exactly as training does
# ("masked" hides a region of the video with the extractor's fixed-seed mask, as `tft2v generate --masked`).
VIDEO_CONDITIONS = ("sketch", "depth", "motion", "masked")
# Conditions built from one uploaded image: held over all frames, the training extractor keeps it as the
# first-frame image (local_image) or takes its sketch for every frame (single_sketch).
IMAGE_CONDITIONS = ("local_image", "single_sketch")
UPLOAD_LABELS = {
    "sketch": "sketch source video", "depth": "depth source video", "motion": "motion source video",
    "masked": "video to inpaint (masked)", "local_image": "first-frame image (local_image)",
    "single_sketch": "image to sketch (single_sketch)",
}
MAX_QUEUE = 16
MAX_SEED = 2**31 - 1

TITLE = "TF-T2V text-to-video"
HELP = (
    "Describe a short clip and press **Generate**. More steps give cleaner video but take longer; "
    "guidance sets how closely the video follows the prompt; the same seed gives the same video."
)
CSS = """
.gradio-container {max-width: 1040px !important; margin: auto;}
#tft2v-header p {color: var(--body-text-color-subdued); margin-top: 0;}
"""


@dataclass(frozen=True)
class GenerateParams:
    """One request from the form. ``condition_videos`` / ``condition_images`` map a condition name to an
    uploaded video / image file."""

    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_frames: int
    scheduler: str
    condition_videos: dict[str, str] | None = None
    condition_images: dict[str, str] | None = None
    refine: bool = False  # also refine with the served refinement model (tft2v serve --refine)


def model_conditions(pipe, depth_model=None) -> tuple[str, ...]:
    """The conditions this pipeline's UNet was trained with that a user can upload, in UI order (videos,
    then images); depth only when a depth model is at hand to extract it."""
    names = set(pipe.unet.config.conditions)
    return tuple(n for n in VIDEO_CONDITIONS + IMAGE_CONDITIONS
                 if n in names and (n != "depth" or depth_model is not None))


def generate_video(pipe, params: GenerateParams, out_dir: str | Path,
                   progress: Callable[[int, int], None] | None = None, depth_model=None, refiner=None) -> Path:
    """Run the pipeline for one request and write ``out_dir/<id>.mp4``; returns that path.

    ``progress(step, total)`` is called after each denoising step; ``depth_model`` (a path, a
    DepthEstimator or "luminance") is needed only for a depth condition video; ``refiner`` (a
    TFT2VRefinePipeline) refines the result when ``params.refine``.
    """
    from tft2v.condition_io import hold_still, read_condition_video, read_still
    from tft2v.video_export import export_video

    prompt = params.prompt.strip()
    if not prompt:
        raise TFT2VError("the prompt is empty; describe the video you want")
    offered = model_schedulers(pipe)
    if params.scheduler not in offered:
        raise TFT2VError(f"unknown scheduler {params.scheduler!r}; use one of {list(offered)}")
    defaults = pipe.defaults
    height, width, fps = defaults["height"], defaults["width"], defaults["fps"]
    # Read as `tft2v generate` reads its files; an image is held still over the frames and the training
    # extractor makes it the first-frame image (local_image) or its sketch on every frame (single_sketch).
    videos = {name: read_condition_video(path, params.num_frames, fps, (height, width),
                                         error=f"cannot use {Path(path).name} as a condition video")
              for name, path in (params.condition_videos or {}).items()}
    videos |= {name: hold_still(read_still(path, (height, width), error=f"cannot use {Path(path).name} as the "
                                           f"{name} image"), params.num_frames)
               for name, path in (params.condition_images or {}).items()}

    if params.refine:
        from tft2v.refine_pipeline import frame_plan

        if refiner is None:
            raise TFT2VError("no refinement model is loaded (start the UI with tft2v serve --refine DIR)")
        double = frame_plan(params.num_frames, refiner.defaults["num_frames"], "the requested video")
    pipe.set_scheduler(params.scheduler)  # safe: the queue runs one request at a time
    frames = pipe(
        prompt,
        negative_prompt=params.negative_prompt,
        num_frames=int(params.num_frames),
        num_inference_steps=int(params.num_inference_steps),
        guidance_scale=float(params.guidance_scale),
        generator=torch.Generator().manual_seed(int(params.seed)),
        condition_videos=videos or None,
        depth_model=depth_model,
        output_type="uint8",
        callback=None if progress is None else (lambda i, n, _x: progress(i + 1, n)),
    )  # (1, F, H, W, 3) uint8
    if params.refine:
        clip = torch.from_numpy(frames[0]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
        frames = refiner(clip, prompt, generator=torch.Generator(device=refiner.execution_device).manual_seed(
            int(params.seed)), output_type="uint8", double_frames=double)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return export_video(frames[0], out_dir / f"tft2v-{params.seed}-{uuid.uuid4().hex[:8]}.mp4", fps=fps)


def make_handler(pipe, out_dir: Path, conditions: tuple[str, ...], depth_model=None, refiner=None) -> Callable:
    """The Generate click handler: form values (+ one upload per condition, then the refine box when a
    refiner is served) -> (mp4 path, summary); user errors become ``gr.Error`` so the page shows them as a
    message instead of a stack trace."""

    def on_generate(prompt, negative_prompt, steps, guidance, frames, seed, scheduler, *uploads,
                    progress=gr.Progress()):
        refine = bool(uploads[len(conditions)]) if refiner is not None else False
        files = {name: path for name, path in zip(conditions, uploads) if path}
        videos = {n: p for n, p in files.items() if n not in IMAGE_CONDITIONS}
        images = {n: p for n, p in files.items() if n in IMAGE_CONDITIONS}
        params = GenerateParams(prompt, negative_prompt, int(steps), float(guidance), int(seed or 0),
                                int(frames), scheduler, videos or None, images or None, refine)
        progress(0, desc="starting")
        start = time.perf_counter()
        try:
            path = generate_video(pipe, params, out_dir,
                                  lambda i, n: progress((i, n), desc="denoising", unit="steps"), depth_model, refiner)
        except TFT2VError as err:
            raise gr.Error(str(err)) from None
        used = f" · {', '.join(files)} from upload" if files else ""
        used += " · refined" if refine else ""
        info = (f"seed {params.seed} · {params.num_frames} frames · {params.num_inference_steps} {params.scheduler} "
                f"steps · guidance {params.guidance_scale:g}{used} · {time.perf_counter() - start:.1f} s")
        return str(path), info

    return on_generate


def build_app(pipe, out_dir: str | Path | None = None, depth_model=None, refiner=None) -> gr.Blocks:
    """The Blocks app: form on the left, video on the right; with ``refiner`` (a TFT2VRefinePipeline) a
    box to refine the result. Call ``.launch(**launch_kwargs())``."""
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tft2v-serve-"))
    defaults = pipe.defaults
    conditions = model_conditions(pipe, depth_model)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Column(elem_id="tft2v-header"):
            gr.Markdown(f"# {TITLE}\n{HELP}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a red circle moving left on a blue background")
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt",
                                      value=defaults["negative_prompt"])
                with gr.Row():
                    steps = gr.Slider(1, 100, step=1, label="Steps", elem_id="steps",
                                      value=defaults["num_inference_steps"])
                    guidance = gr.Slider(1.0, 20.0, step=0.5, label="Guidance", elem_id="guidance",
                                         value=defaults["guidance_scale"])
                with gr.Row():
                    frames = gr.Slider(1, 64, step=1, label="Frames", elem_id="frames",
                                       value=defaults["num_frames"])
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                     elem_id="seed")
                offered = model_schedulers(pipe)
                scheduler = gr.Radio(list(offered), value=offered[0], label="Scheduler", elem_id="scheduler",
                                     info="ddim: VGen's sampler; dpmpp: DPM-Solver++, good in ~20 steps"
                                     + ("; lcm: this distilled model's own, 1-8 steps" if "lcm" in offered else ""))
                refine = []
                if refiner is not None:
                    d = refiner.defaults
                    refine.append(gr.Checkbox(label=f"Refine to {d['width']}x{d['height']} (slow)", value=False,
                                              elem_id="refine"))
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                uploads = []
                if conditions:
                    with gr.Accordion("Conditions (optional)", open=False):
                        gr.Markdown("Each upload is turned into its condition exactly as in training "
                                    "and guides the layout and motion; leave any of them empty.")
                        for name in conditions:
                            kind = gr.Image if name in IMAGE_CONDITIONS else gr.Video
                            # image_mode=None: Gradio hands over the file as uploaded and our reader
                            # normalises modes (alpha on white …) exactly as `tft2v generate` does.
                            extra = {"type": "filepath", "image_mode": None} if kind is gr.Image else {}
                            uploads.append(kind(label=UPLOAD_LABELS[name], sources=["upload"], height=200,
                                                elem_id=f"condition-{name}", **extra))
            with gr.Column(scale=1):
                video = gr.Video(label="Result", interactive=False, autoplay=True, loop=True,
                                 elem_id="result")
                info = gr.Markdown(elem_id="result-info")

        on_generate = make_handler(pipe, out_dir, conditions, depth_model, refiner)
        inputs = [prompt, negative, steps, guidance, frames, seed, scheduler, *uploads, *refine]
        button.click(on_generate, inputs=inputs, outputs=[video, info], api_name="generate")
        prompt.submit(on_generate, inputs=inputs, outputs=[video, info], api_name=False)
    # One model on one device: requests wait in line instead of running side by side.
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return demo


def launch_kwargs(host: str = "127.0.0.1", port: int | None = None, quiet: bool = True) -> dict:
    """Keyword arguments for ``demo.launch``: local only, no share link, no SSR node server, no web fonts."""
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "Consolas", "monospace"])
    return {"server_name": host, "server_port": port, "share": False, "ssr_mode": False, "theme": theme,
            "css": CSS, "footer_links": [], "show_error": True, "quiet": quiet}
