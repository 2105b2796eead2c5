"""One-pass evaluation of a set of generated videos: FVD, FID, CLIPSIM, frame consistency, toy metrics.

Clips are ``(3, F, H, W)`` floats in ``[-1, 1]`` (batched to ``(B, 3, F, H, W)`` here); uint8
``(F, H, W, C)`` exists only at the file I/O edge. Clips are consumed lazily and only running sums are
kept (plus small per-clip toy results), so sets larger than memory can be scored. A metric whose network
is not given is listed under ``skipped`` with the reason instead of being guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from tft2v.errors import TFT2VError
from tft2v.metrics.clip_metrics import CLIPScorer
from tft2v.metrics.frechet import FeatureStats, frechet_distance_from_stats
from tft2v.metrics.toy import analyse_clip, score_clip, summarise


def batched(clips: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Groups consecutive clips of equal shape into ``(B, 3, F, H, W)`` batches of at most ``batch_size``."""
    group: list[torch.Tensor] = []
    for clip in clips:
        if clip.ndim != 4 or clip.shape[0] != 3:
            raise TFT2VError(f"a clip must be (3, F, H, W), got {tuple(clip.shape)}")
        if group and (len(group) == batch_size or clip.shape != group[0].shape):
            yield torch.stack(group)
            group = []
        group.append(clip)
    if group:
        yield torch.stack(group)


def _device_of(module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


def _accumulate(stats: dict, nets: dict, videos: torch.Tensor, shapes: dict | None = None) -> None:
    """Feeds a batch ``(B, 3, F, H, W)`` to each given feature network and its running stats; counts the
    clip shapes ``"FxHxW"`` in ``shapes``."""
    if shapes is not None:
        key = "x".join(str(n) for n in videos.shape[2:])
        shapes[key] = shapes.get(key, 0) + videos.shape[0]
    for name, net in nets.items():
        if net is not None:
            feats = net(videos.to(_device_of(net)))  # (B, D) for I3D, (B·F, D) for Inception
            stats[name] = stats.get(name) or FeatureStats(feats.shape[1])
            stats[name].update(feats)


def evaluate_videos(
    videos: Iterable[torch.Tensor],
    prompts: list[str | None] | None = None,
    reference: Iterable[torch.Tensor] | None = None,
    i3d=None,
    inception=None,
    clip: CLIPScorer | None = None,
    toy: bool = False,
    batch_size: int = 8,
) -> dict:
    """Scores generated clips; returns a JSON-ready dict.

    ``videos``: clips ``(3, F, H, W)`` in [-1, 1] (or one ``(B, 3, F, H, W)`` tensor); ``prompts``: one
    per clip (``None`` entries allowed); ``reference``: real clips for FVD/FID; ``i3d`` / ``inception``:
    feature extractors from :func:`load_i3d` / :func:`load_inception`; ``clip``: a :class:`CLIPScorer`.
    CLIPSIM averages only over clips that have a prompt. ``clip_shapes`` in the result counts the clips of
    each ``"FxHxW"`` per set; FVD needs one frame count in both sets (I3D features of clips of different
    lengths are not comparable), so a mismatch is an error.
    """
    nets = {"i3d": i3d, "inception": inception}
    gen: dict[str, FeatureStats] = {}
    sums = {"clipsim": 0.0, "n_clipsim": 0, "frame_consistency": 0.0, "n_consistency": 0}
    scored: list[dict] = []
    shapes: dict[str, dict[str, int]] = {"generated": {}, "reference": {}}
    n = 0
    for videos_b in batched(videos, batch_size):
        b = videos_b.shape[0]
        batch_prompts = list(prompts[n : n + b]) if prompts is not None else [None] * b
        if len(batch_prompts) != b:
            raise TFT2VError(f"got {len(prompts)} prompts for more videos than that")
        _accumulate(gen, nets, videos_b, shapes["generated"])
        if clip is not None:
            with_text = [i for i, p in enumerate(batch_prompts) if p]
            if with_text:
                sims = clip.clipsim(videos_b[with_text], [batch_prompts[i] for i in with_text])
                sums["clipsim"] += float(sims.sum())
                sums["n_clipsim"] += len(with_text)
            if videos_b.shape[2] > 1:
                sums["frame_consistency"] += float(clip.frame_consistency(videos_b).sum())
                sums["n_consistency"] += b
        if toy:
            scored += [score_clip(analyse_clip(v), p) for v, p in zip(videos_b, batch_prompts)]
        n += b
    if n == 0:
        raise TFT2VError("no videos to evaluate")
    if prompts is not None and len(prompts) != n:
        raise TFT2VError(f"got {len(prompts)} prompts for {n} videos")

    result: dict = {"num_videos": n, "skipped": {}}
    ref: dict[str, FeatureStats] = {}
    if reference is not None and (i3d is not None or inception is not None):
        result["num_reference"] = 0
        lengths = {int(k.split("x")[0]) for k in shapes["generated"]}
        for videos_b in batched(reference, batch_size):  # one pass feeds both networks
            if i3d is not None and (len(lengths) > 1 or videos_b.shape[2] not in lengths):
                raise TFT2VError(f"FVD compares clips of one length: generated clips have {sorted(lengths)} frames, "
                                 f"a reference clip {videos_b.shape[2]}; score the same frames of each (--eval-frames)")
            _accumulate(ref, nets, videos_b, shapes["reference"])
            result["num_reference"] += videos_b.shape[0]
        if result["num_reference"] == 0:
            raise TFT2VError("no reference videos to compare with")
    result["clip_shapes"] = {k: v for k, v in shapes.items() if v}
    for metric, name in (("fvd", "i3d"), ("fid", "inception")):
        if nets[name] is None:
            result["skipped"][metric] = f"no {name} network given"
        elif name not in ref:
            result["skipped"][metric] = "no reference videos given"
        else:
            result[metric] = frechet_distance_from_stats(gen[name], ref[name])
    if "fid" in result:
        result["fid_num_frames"] = gen["inception"].count
    if clip is None:
        result["skipped"]["clipsim"] = result["skipped"]["frame_consistency"] = "no CLIP model given"
    else:
        if sums["n_clipsim"]:
            result["clipsim"] = sums["clipsim"] / sums["n_clipsim"]
            result["clipsim_x100"] = 100 * result["clipsim"]
        else:
            result["skipped"]["clipsim"] = "no prompts given"
        if sums["n_consistency"]:
            result["frame_consistency"] = sums["frame_consistency"] / sums["n_consistency"]
            result["frame_consistency_x100"] = 100 * result["frame_consistency"]
        else:
            result["skipped"]["frame_consistency"] = "all videos have a single frame"
    if toy:
        result["toy"] = {**summarise(scored), "clips": scored}
    return result
