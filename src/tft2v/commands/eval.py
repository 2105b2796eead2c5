"""``tft2v eval``: FVD, FID, CLIPSIM, frame consistency and toy-world metrics, as JSON + markdown.

Two modes (SPEC §2):

* ``--model DIR --prompts FILE --reference DIR``: sample the model on every prompt × seed (written as
  videos beside the report), then score the samples against the reference videos in the same run;
* ``--videos DIR [--reference DIR]``: score existing video files.

Files are decoded to uint8 ``(F, H, W, C)`` here (the I/O edge) and handed on as ``(3, F, H, W)`` clips
in ``[-1, 1]``; samples are scored from the same uint8 frames that are written. ``--eval-frames`` /
``--frame-stride`` pick the frames scored in every clip of both sets. Each network-based metric runs
only when its weights are given (local paths); the report spells out the protocol: set sizes, frames,
stride, resolutions, sampling settings, and each feature network with its preprocessing and SHA-256.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import typer

from tft2v.data.media_types import VIDEO_EXTS
from tft2v.errors import TFT2VError

VIDEO_SUFFIXES = VIDEO_EXTS + (".gif",)  # the videos training reads, and the GIFs `tft2v generate` writes
FVD_FRAMES = 16  # the FVD convention (FVD16)


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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,7"`` / ``"0-3"`` / ``"0-3,10"`` → seeds (each prompt is sampled once per seed)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise TFT2VError(f"--seeds must look like 0,1,2 or 0-3 (non-negative, ranges ascending), got {text!r}")
        seeds += list(range(int(match[1]), int(match[2] or match[1]) + 1))
    if len(set(seeds)) != len(seeds):
        raise TFT2VError(f"--seeds repeats a seed: {text!r}")
    return seeds


def frame_indices(num_frames: int, eval_frames: int | None, stride: int, name: str) -> list[int]:
    """Frames scored in a clip of ``num_frames``: ``0, s, 2s, …`` (``eval_frames`` of them, else all)."""
    if eval_frames is None:
        return list(range(0, num_frames, stride))
    need = (eval_frames - 1) * stride + 1
    if num_frames < need:
        raise TFT2VError(f"{name} has {num_frames} frames; --eval-frames {eval_frames} --frame-stride {stride} "
                         f"needs {need}")
    return list(range(0, need, stride))


def select_frames(clip, eval_frames: int | None, stride: int, name: str):
    """``(3, F, H, W)`` → the scored frames ``(3, F', H, W)``."""
    if eval_frames is None and stride == 1:
        return clip
    return clip[:, frame_indices(clip.shape[1], eval_frames, stride, name)]


def iter_clips(files: list[Path], eval_frames: int | None = None, stride: int = 1) -> Iterator:
    """Decodes each file to a ``(3, F, H, W)`` float clip in [-1, 1] (its scored frames), one at a time."""
    from tft2v.data.toy import to_pixels
    from tft2v.data.toy_files import read_video

    for f in files:
        try:
            frames = read_video(f)  # uint8 (F, H, W, 3)
        except Exception as e:  # PyAV raises many types for corrupt files
            raise TFT2VError(f"cannot decode {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        yield select_frames(to_pixels(frames), eval_frames, stride, str(f))


def count_frames(path: Path) -> int:
    """Frames in a video file (decoded: containers do not always know)."""
    from tft2v.data.toy_files import read_video

    try:
        return len(read_video(path))
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for corrupt files
        raise TFT2VError(f"cannot decode {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def read_sampling_prompts(path: Path) -> list[str]:
    """The prompts to sample: one a line, blank and ``#`` lines skipped."""
    if not path.is_file():
        raise TFT2VError(f"prompts file not found: {path}")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise TFT2VError(f"prompts file {path} is not UTF-8 text") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise TFT2VError(f"prompts file {path} holds no prompts")
    return prompts


def sample_clips(pipe, jobs: list[tuple[str, int]], batch: int, settings: dict, folder: Path, fps: int,
                 eval_frames: int | None, stride: int) -> Iterator:
    """Samples ``(prompt, seed)`` jobs ``batch`` at a time; writes each video (+ its prompt as .txt) to
    ``folder`` and yields its scored frames as a ``(3, F, H, W)`` clip in [-1, 1]."""
    import torch

    from tft2v import export_video
    from tft2v.data.toy import to_pixels
    from tft2v.data.toy_files import write_video

    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]  # each video independent of its batch
        videos = pipe([p for p, _ in chunk], generator=generators, output_type="uint8", **settings)  # (B, F, H, W, 3)
        for i, (prompt, seed) in enumerate(chunk):
            frames = videos[i]
            path = folder / f"{start + i:05d}_seed{seed}.mp4"
            if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0:
                write_video(path, frames, fps=fps)  # lossless: --videos on this folder scores the same pixels
            else:
                export_video(frames, path, fps=fps)
            path.with_suffix(".txt").write_text(prompt + "\n")
            yield select_frames(to_pixels(frames), eval_frames, stride, str(path))


def network_protocol(fe, network: str, features: str) -> dict:
    """A feature network's identity and preprocessing for the report."""
    from tft2v.metrics.convert import read_metadata

    entry = {"network": network, "features": features, "weights": fe.source, "sha256": fe.sha256,
             "preprocess": fe.preprocess}
    converted = read_metadata(fe.source) if fe.source else {}
    if converted:
        entry["converted_from"] = converted  # source file, format and SHA-256 (tft2v convert)
    return entry


def protocol_notes(result: dict, eval_frames_used: set[int]) -> list[str]:
    """Caveats a reader of the numbers needs."""
    notes = []
    if "fvd" in result and eval_frames_used and eval_frames_used != {FVD_FRAMES}:
        notes.append(f"FVD on {sorted(eval_frames_used)}-frame clips: published FVD uses 16 frames, so this is not "
                     "comparable with FVD16 numbers")
    for metric, dim in (("fvd", 400), ("fid", 2048)):
        n = result.get("fid_num_frames" if metric == "fid" else "num_videos", 0)
        if metric in result and min(n, result.get("num_reference", 0)) < dim:
            notes.append(f"{metric.upper()} from fewer samples than feature dimensions ({dim}): biased upward; compare "
                         "only numbers computed with the same set sizes")
    return notes


def eval_command(
    videos: Optional[str] = typer.Option(None, "--videos", help="Folder or glob of generated videos (mp4/gif/...)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder to sample on --prompts "
                                         "(then score the samples)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Folder or glob of real videos (for FVD/FID)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="--model: prompts to sample, one a line. --videos: "
                                           "one prompt per video in sorted order (default: sidecar .txt files)."),
    i3d: Optional[Path] = typer.Option(None, "--i3d", help="I3D weights (tft2v convert i3d output, PyTorch-port "
                                       "state dict or TorchScript) → FVD."),
    inception: Optional[Path] = typer.Option(None, "--inception", help="FID InceptionV3 weights (tft2v convert "
                                             "inception output or pytorch-fid layout) → FID."),
    clip: Optional[Path] = typer.Option(None, "--clip", help="Hugging Face CLIP folder → CLIPSIM, frame consistency."),
    toy: bool = typer.Option(False, "--toy", help="Shapes-world analytic metrics (colour/shape/direction/...)."),
    out: Path = typer.Option(Path("metrics.json"), "--out", help="JSON output; a .md report is written beside it."),
    eval_frames: Optional[int] = typer.Option(None, "--eval-frames", min=1, help="Frames scored per clip (both sets): "
                                              "the first N at --frame-stride (default: all; FVD convention: 16)."),
    frame_stride: int = typer.Option(1, "--frame-stride", min=1, help="Take every S-th frame of each clip."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Videos per feature-network batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    seeds: str = typer.Option("0", "--seeds", help="--model: seeds per prompt, e.g. 0,1,2 or 0-3."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="--model: denoising steps (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="--model: guidance scale "
                                             "(default: the model's)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="--model: ddim, dpmpp, ... (default: the model's)."),
    sample_batch: int = typer.Option(4, "--sample-batch", min=1, help="--model: videos per sampling call."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="--model: frames per video (default: the model's)."),
    height: Optional[int] = typer.Option(None, "--height", min=8, help="--model: height (default: the model's)."),
    width: Optional[int] = typer.Option(None, "--width", min=8, help="--model: width (default: the model's)."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="--model: folder for the sampled videos "
                                           "(default: OUT's name + _samples, beside OUT)."),
) -> None:
    """Score generated videos (or sample a model, then score); writes OUT (JSON) and OUT with .md (report)."""
    import torch

    from tft2v.metrics import CLIPScorer, load_i3d, load_inception
    from tft2v.metrics.evaluate import evaluate_videos
    from tft2v.metrics.report import markdown, write_report

    if (videos is None) == (model is None):
        raise TFT2VError("give either --videos DIR (score files) or --model DIR --prompts FILE (sample, then score)")
    if not (i3d or inception or clip or toy):
        raise TFT2VError("nothing to compute: give --i3d, --inception, --clip and/or --toy")
    if (i3d or inception) and reference is None:
        raise TFT2VError("FVD / FID need --reference DIR (real videos)")
    sampling_only = {"--seeds": seeds != "0", "--steps": steps, "--guidance": guidance, "--scheduler": scheduler,
                     "--frames": frames, "--height": height, "--width": width, "--samples": samples}
    if videos is not None and any(v is not None and v is not False for v in sampling_only.values()):
        used = [k for k, v in sampling_only.items() if v is not None and v is not False]
        raise TFT2VError(f"{', '.join(used)} only apply to --model (sampling)")
    ref_files = list_videos(reference) if reference else None
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    # Networks first: a bad weights file fails before any sampling.
    i3d_fe = load_i3d(i3d).to(dev) if i3d else None
    inception_fe = load_inception(inception).to(dev) if inception else None
    scorer = None
    if clip:
        scorer = CLIPScorer.from_pretrained(clip)
        scorer.model.to(dev)

    protocol: dict = {"eval_frames": eval_frames or "all", "frame_stride": frame_stride}
    if model is not None:
        from tft2v.pipeline import TFT2VPipeline

        if prompts is None:
            raise TFT2VError("--model needs --prompts FILE (the prompts to sample, one a line)")
        prompt_list, seed_list = read_sampling_prompts(prompts), parse_seeds(seeds)
        folder = samples or out.parent / f"{out.stem}_samples"
        if folder.exists() and any(folder.iterdir()):
            raise TFT2VError(f"samples folder {folder} exists and is not empty; pass --samples NEW_DIR")
        pipe = TFT2VPipeline.from_pretrained(model)
        if scheduler is not None:
            pipe.set_scheduler(scheduler)
        pipe.to(dev)
        pipe.set_progress_bar_config(disable=True)
        d = pipe.defaults
        num_frames = frames or d["num_frames"]
        frame_indices(num_frames, eval_frames, frame_stride, "each sampled video")  # fail before sampling
        if ref_files and i3d_fe is not None:
            n_ref = len(frame_indices(count_frames(ref_files[0]), eval_frames, frame_stride, str(ref_files[0])))
            n_gen = len(frame_indices(num_frames, eval_frames, frame_stride, "each sampled video"))
            if n_ref != n_gen:
                raise TFT2VError(f"FVD compares clips of one length: samples would give {n_gen} frames, "
                                 f"{ref_files[0].name} {n_ref}; pass --eval-frames N (or --frames)")
        settings = {"num_frames": num_frames, "height": height or d["height"], "width": width or d["width"],
                    "num_inference_steps": steps or d["num_inference_steps"],
                    "guidance_scale": d["guidance_scale"] if guidance is None else guidance}
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(p, s) for p in prompt_list for s in seed_list]
        gen: Iterable = sample_clips(pipe, jobs, sample_batch, settings, folder, int(d["fps"]), eval_frames,
                                     frame_stride)
        clip_prompts: list[str | None] = [p for p, _ in jobs]
        protocol["sampling"] = {"model": str(model), "prompts_file": str(prompts), "num_prompts": len(prompt_list),
                                "seeds": seed_list, "scheduler": type(pipe.scheduler).__name__,
                                "steps": settings["num_inference_steps"], "guidance": settings["guidance_scale"],
                                "frames": num_frames, "resolution": f"{settings['height']}x{settings['width']}",
                                "sample_batch": sample_batch, "samples": str(folder)}
        files: list[Path] | None = None
    else:
        files = list_videos(videos)
        gen = iter_clips(files, eval_frames, frame_stride)
        clip_prompts = read_prompts(files, prompts)
        protocol["videos"] = str(videos)
    if ref_files and (i3d_fe or inception_fe):
        protocol["reference"] = str(reference)

    result = evaluate_videos(
        gen,
        prompts=clip_prompts,
        reference=iter_clips(ref_files, eval_frames, frame_stride) if ref_files and (i3d_fe or inception_fe) else None,
        i3d=i3d_fe,
        inception=inception_fe,
        clip=scorer,
        toy=toy,
        batch_size=batch_size,
    )
    if i3d_fe is not None:
        protocol["fvd"] = network_protocol(i3d_fe, "I3D Kinetics-400 RGB (DeepMind i3d-kinetics-400)",
                                           "400 logits" if i3d_fe.feature == "logits" else "1024 pre-logit")
    if inception_fe is not None:
        protocol["fid"] = network_protocol(inception_fe, "InceptionV3 FID graph (TF 2015-12-05), per frame",
                                           "2048 pool3")
    if scorer is not None:
        protocol["clip"] = {"model": str(clip), "image_size": scorer.image_size,
                            "preprocess": "shorter side resized (bicubic, antialiased) and centre-cropped, "
                                          "CLIP mean/std; cosine similarity"}
    used = {int(k.split("x")[0]) for side in result.get("clip_shapes", {}).values() for k in side}
    protocol["notes"] = protocol_notes(result, used)
    result["protocol"] = protocol
    if files is not None:
        result["videos"] = [str(f) for f in files]
    json_path, md_path = write_report(result, out)
    print(markdown(result), end="")
    print(f"wrote {json_path} and {md_path}")
