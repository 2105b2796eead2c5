"""``tft2v eval``: score video files with FVD, FID, CLIPSIM, frame consistency and toy-world metrics.

Files are decoded to uint8 ``(F, H, W, C)`` here (the I/O edge) and handed on as ``(3, F, H, W)``
clips in ``[-1, 1]``. Each network-based metric runs only when its weights are given (local paths).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import typer

from tft2v.errors import TFT2VError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")


def list_videos(spec: str) -> list[Path]:
    """A folder (its video files, sorted) or a glob pattern → video paths; none found is an error."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise TFT2VError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) found at {spec}")
    return files


def read_prompts(files: list[Path], prompts_file: Path | None) -> list[str | None]:
    """One prompt per video: line ``i`` of ``prompts_file`` (blank lines skipped), else the sidecar ``.txt``."""
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise TFT2VError(f"prompts file not found: {prompts_file}")
        lines = [ln.strip() for ln in prompts_file.read_text().splitlines() if ln.strip()]
        if len(lines) != len(files):
            raise TFT2VError(f"{prompts_file} has {len(lines)} prompts for {len(files)} videos")
        return lines
    sidecars = [f.with_suffix(".txt") for f in files]
    return [s.read_text().strip() or None if s.is_file() else None for s in sidecars]


def iter_clips(files: list[Path]) -> Iterator:
    """Decodes each file (all frames) to a ``(3, F, H, W)`` float clip in [-1, 1], one at a time."""
    from tft2v.data.toy import to_pixels
    from tft2v.data.toy_files import read_video

    for f in files:
        try:
            frames = read_video(f)  # uint8 (F, H, W, 3)
        except Exception as e:  # PyAV raises many types for corrupt files
            raise TFT2VError(f"cannot decode {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        yield to_pixels(frames)


def eval_command(
    videos: str = typer.Option(..., "--videos", help="Folder or glob of generated videos (mp4/gif/...)."),
    reference: str = typer.Option(None, "--reference", help="Folder or glob of real videos (for FVD/FID)."),
    prompts: Path = typer.Option(None, "--prompts", help="Text file, one prompt per video in sorted order "
                                 "(default: sidecar .txt next to each video)."),
    i3d: Path = typer.Option(None, "--i3d", help="I3D weights (PyTorch-port state dict or TorchScript) → FVD."),
    inception: Path = typer.Option(None, "--inception", help="FID InceptionV3 weights (pytorch-fid layout) → FID."),
    clip: Path = typer.Option(None, "--clip", help="Hugging Face CLIP folder → CLIPSIM, frame consistency."),
    toy: bool = typer.Option(False, "--toy", help="Shapes-world analytic metrics (colour/shape/direction/...)."),
    out: Path = typer.Option(Path("metrics.json"), "--out", help="JSON output; a .md table is written beside it."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Videos per network batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
) -> None:
    """Score generated videos; writes OUT (JSON) and OUT with .md (markdown table)."""
    import torch

    from tft2v.metrics import CLIPScorer, load_i3d, load_inception
    from tft2v.metrics.evaluate import evaluate_videos
    from tft2v.metrics.report import markdown, write_report

    if not (i3d or inception or clip or toy):
        raise TFT2VError("nothing to compute: give --i3d, --inception, --clip and/or --toy")
    files = list_videos(videos)
    ref_files = list_videos(reference) if reference else None
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    scorer = None
    if clip:
        scorer = CLIPScorer.from_pretrained(clip)
        scorer.model.to(dev)
    result = evaluate_videos(
        iter_clips(files),
        prompts=read_prompts(files, prompts),
        reference=iter_clips(ref_files) if ref_files else None,
        i3d=load_i3d(i3d).to(dev) if i3d else None,
        inception=load_inception(inception).to(dev) if inception else None,
        clip=scorer,
        toy=toy,
        batch_size=batch_size,
    )
    result["videos"] = [str(f) for f in files]
    json_path, md_path = write_report(result, out)
    print(markdown(result), end="")
    print(f"wrote {json_path} and {md_path}")
