"""``tft2v precompute CONFIG.yaml --out DIR [--set key=value ...]``: the offline latent/embedding cache.

Reads every data stream a training config would read (same sources, resolution, frames, fps, seed),
runs it once through that config's autoencoder and encoder and writes a cache folder
(tft2v.data.cache) that ``data.cache: DIR`` then trains from without running either model per step.
Videos are ``(B, C, F, H, W)`` on the way through; bad files are skipped exactly as the sources skip
them and reported by reason at the end. Heavy imports happen inside the command.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import TFT2VError

STREAMS = (("images", "image"), ("videos", "video"), ("captioned_videos", "video"))


def _source_streams(cfg) -> dict:
    """name -> (iterable of SAMPLE | None, total or None, source or None) for ``data.kind: sources``.

    Unshuffled, one process: the cache is a set; training reshuffles it every epoch.
    """
    from tft2v.data.sources import build_source

    d, out = cfg.data, {}
    for name, kind in STREAMS:
        spec = getattr(d, name)
        if not spec:
            continue
        source = build_source(spec, kind=kind, data_dir=d.data_dir or None, num_frames=d.num_frames, fps=d.fps,
                              size=(d.height, d.width), seed=cfg.seed, shuffle=False, rank=0, world_size=1)
        total = len(source) if hasattr(source, "__len__") else None
        out[name] = (source.iter_with_skips(), total, source)
    return out


def _toy_streams(cfg) -> dict:
    """The shapes-world sets the trainer would generate for this config, each read once."""
    from tft2v.train.data import mix_config, toy_streams, wanted_streams

    streams = toy_streams(cfg, 0, *wanted_streams(mix_config(cfg)))
    counts = {"images": cfg.data.toy_images, "videos": cfg.data.toy_videos,
              "captioned_videos": cfg.data.toy_captioned_videos}
    # The toy streams are endless permutations; one epoch is every sample once.
    return {name: (itertools.islice(stream, counts[name]), counts[name], None)
            for name, stream in streams.items() if stream is not None}


def precompute_cache(cfg, out: str | Path, shard_size: int = 256, batch_size: int = 8, device: str = "cpu",
                     dtype: str = "float32", limit: int | None = None, progress: bool = True) -> dict:
    """Write the cache of ``cfg``'s data to ``out``; returns the manifest (skips by reason included)."""
    from tqdm.auto import tqdm

    from tft2v.config import to_dict
    from tft2v.data.cache import CacheWriter
    from tft2v.train.data import build_autoencoder_from_config, build_encoder_from_config

    if batch_size < 1 or (limit is not None and limit < 1):
        raise TFT2VError(f"--batch-size and --limit must be >= 1, got {batch_size} and {limit}")
    encoder = build_encoder_from_config(cfg).to(device)
    autoencoder = build_autoencoder_from_config(cfg).to(device)
    d = cfg.data
    geometry = {"height": d.height, "width": d.width, "num_frames": d.num_frames, "fps": d.fps}
    info = {"seed": cfg.seed, "data": to_dict(d), "encoder": to_dict(cfg.encoder),
            "autoencoder": to_dict(cfg.autoencoder)}
    writer = CacheWriter(out, encoder, autoencoder, geometry, shard_size=shard_size, dtype=dtype, info=info)
    streams = _toy_streams(cfg) if d.kind == "toy" else _source_streams(cfg)
    skips = {}
    for name, (samples, total, source) in streams.items():
        if limit is not None:
            samples, total = itertools.islice(samples, limit), min(total or limit, limit)
        with tqdm(total=total, desc=name, unit="sample", disable=not progress) as bar:
            def advance(written: int, skipped: int) -> None:
                bar.update(written + skipped - bar.n)
            writer.write_stream(name, samples, batch_size=batch_size, progress=advance)
        if source is not None:
            skips[name] = {k: v for k, v in source.stats.as_dict().items() if v and k != "ok"}
    return writer.finish(skips)


def precompute(
    config: Optional[Path] = typer.Argument(None, help="YAML training config (default: the built-in defaults)."),
    out: Path = typer.Option(..., "--out", help="New cache folder to write."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Dotted override key=value, repeatable (the same as tft2v train's)."),
    shard_size: int = typer.Option(256, help="Samples per safetensors shard."),
    batch_size: int = typer.Option(8, help="Samples per encoder/autoencoder batch."),
    device: str = typer.Option("cpu", help="Where the encoders run (cpu, cuda, cuda:1, mps)."),
    dtype: str = typer.Option("float32", help="Stored precision: float32, float16 or bfloat16."),
    limit: Optional[int] = typer.Option(None, help="At most this many items per stream (a quick trial)."),
) -> None:
    """Encode a config's data once (VAE posteriors, text tokens, image embeddings) for data.cache=OUT."""
    from tft2v.config import load_config

    start = time.perf_counter()
    manifest = precompute_cache(load_config(config, list(overrides or [])), out, shard_size=shard_size,
                                batch_size=batch_size, device=device, dtype=dtype, limit=limit)
    for name, entry in manifest["streams"].items():
        skipped = manifest.get("skips", {}).get(name) or {}
        reasons = ", ".join(f"{k} {v}" for k, v in skipped.items()) or "none"
        typer.echo(f"{name}: {entry['count']} samples in {len(entry['shards'])} shards; "
                   f"skipped {entry['skipped']} ({reasons})")
    typer.echo(f"wrote {out} in {time.perf_counter() - start:.1f} s; train from it with --set data.cache={out}")
