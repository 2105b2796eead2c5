"""``tft2v serve``: a local web UI for one model folder (see :mod:`tft2v.webui`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import TFT2VError


def load_pipeline(model: Path, device: str = "auto"):
    """Read a model folder (bad folders raise a one-line TFT2VError) and move it to ``device``
    ("auto": CUDA when present, else CPU)."""
    import torch

    from tft2v.pipeline import TFT2VPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise TFT2VError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise TFT2VError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return TFT2VPipeline.from_pretrained(model).to(device)


def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (model_index.json, unet/, ...)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", min=1, max=65535,
                                       help="Port to listen on (default: first free port from 7860)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 serves your network."),
    share: str = typer.Option("off", "--share", help="Public share links: only 'off' (they relay through "
                              "Gradio's servers; use --host behind your own proxy instead)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    depth_model: Optional[str] = typer.Option(None, "--depth-model", help="TorchScript depth network (or "
                                              "'luminance') used to offer a depth condition upload."),
    refine: Optional[Path] = typer.Option(None, "--refine", help="A refinement model folder (VGen's SR600): "
                                          "offer to refine each result."),
) -> None:
    """Start a web UI for a model folder: prompt, settings, conditions, progress and the video result.

    Example: tft2v serve --model runs/toy/model --port 7860, then open http://127.0.0.1:7860
    """
    if share != "off":
        raise TFT2VError(f"--share {share}: public share links are not supported; serve on --host 0.0.0.0 "
                         "behind your own proxy instead")
    if depth_model not in (None, "luminance") and not Path(depth_model).is_file():
        raise TFT2VError(f"--depth-model {depth_model} is not a file")
    pipe = load_pipeline(model, device)
    refiner = None
    if refine is not None:
        from tft2v.refine_pipeline import TFT2VRefinePipeline

        if not (refine / "model_index.json").is_file():
            raise TFT2VError(f"--refine {refine} is not a model folder (no model_index.json)")
        refiner = TFT2VRefinePipeline.from_pretrained(refine).to(pipe.device)

    from tft2v.webui import build_app, launch_kwargs

    demo = build_app(pipe, depth_model=depth_model, refiner=refiner)
    # Quiet launch: Gradio's own banner suggests share=True, which this command deliberately refuses.
    _, url, _ = demo.launch(**launch_kwargs(host, port), prevent_thread_lock=True)
    print(f"tft2v serve: {model} on {pipe.device} at {url} (Ctrl+C to stop)", flush=True)
    demo.block_thread()
