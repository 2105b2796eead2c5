"""Offline cache of VAE posteriors and text/image embeddings, so training can skip the encoders.

Videos are ``(B, C, F, H, W)`` at every boundary (an image is F = 1); a cached sample drops the batch
axis. ``tft2v precompute`` runs each data stream once through the run's autoencoder and encoder and
writes, per sample (a CACHED SAMPLE, what :class:`CachedSource` yields):

* ``latent_mean`` (C, F, h, w) and ``latent_std`` (C, F, h, w): the VAE posterior's parameters,
  unscaled, frame by frame. Training draws a FRESH latent every step with the step's generator,
  ``autoencoder.sample_posterior(mean, std, generator)`` = (mean + std·ε)·scaling_factor, exactly what
  ``autoencoder.encode`` would draw from the same generator state (VGen samples the posterior each
  step; a cache of one fixed sample would lose that). Pixel space stores the pixels as
  ``latent_mean`` and no ``latent_std``.
* ``text_tokens`` (L, D): ``encode_text([caption])``. An empty caption is not stored per sample: the
  shared empty-string embedding (``shared.safetensors``) is returned for it.
* ``image_embed`` (D,): ``encode_image`` of the frame the recipe conditions on (the conditioning frame
  of a video, the image itself for an image); only when the encoder has an image tower.
* ``caption``, ``has_text``, ``key``, ``meta``.

A cache holds one realisation of each stream's random choices (clip start, random cond frame) — those
are fixed, the posterior sample is not.

Folder: ``manifest.json`` (written last, so a half-written cache is never read), ``shared.safetensors``
and ``<stream>/<stream>-NNNNNN.safetensors`` shards (tensors ``"<i>.latent_mean"`` …, per-sample fields
as JSON in the ``samples`` metadata entry). The manifest records the encoder's and autoencoder's
identity (kind, sizes, a weights fingerprint) and the geometry (height, width, frames, fps), and
:func:`check_manifest` rejects a cache that does not match the run in one line.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import IterableDataset

from tft2v.data.sharding import EpochSampler, shard_indices, shard_length, worker_shard
from tft2v.errors import TFT2VError
from tft2v.jsonio import read_json

FORMAT, VERSION = "tft2v-cache", 1
MANIFEST, SHARED = "manifest.json", "shared.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GEOMETRY = ("height", "width", "num_frames", "fps")
_FINGERPRINT_ELEMENTS = 4096  # per tensor: enough to tell weights apart, cheap for a ViT-H


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's state dict: names, shapes, dtypes and evenly spaced raw values.

    Exact bytes (no float sums) so it is the same on every machine for the same weights; strided so a
    billion-parameter encoder hashes in well under a second.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_ELEMENTS)
        picked = flat[::step].cpu().contiguous()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"")
    return h.hexdigest()[:16]


def identity(encoder, autoencoder) -> dict:
    """What a cache depends on: the encoder's and autoencoder's kind, sizes and weights."""
    return {
        "encoder": {"kind": encoder.kind, "text_dim": encoder.text_dim, "image_dim": encoder.image_dim,
                    "max_length": encoder.max_length, "fingerprint": weights_fingerprint(encoder)},
        "autoencoder": {"kind": autoencoder.kind, "latent_channels": autoencoder.latent_channels,
                        "spatial_factor": autoencoder.spatial_factor,
                        "scaling_factor": float(autoencoder.scaling_factor),
                        "fingerprint": weights_fingerprint(autoencoder)},
    }


@torch.no_grad()
def encode_samples(samples: list[dict], encoder, autoencoder, chunk_size: int = 8) -> list[dict]:
    """SAMPLE dicts of one shape (pixels (3, F, H, W)) -> their cached tensors, batched through the models.

    Returns one dict per sample: ``latent_mean`` / ``latent_std`` (C, F, h, w) on the CPU,
    ``text_tokens`` (L, D) for a non-empty caption, ``image_embed`` (D,) with an image tower.
    """
    pixels = torch.stack([s["pixels"] for s in samples])  # (B, 3, F, H, W)
    mean, std = autoencoder.posterior(pixels, chunk_size=chunk_size)  # (B, C, F, h, w) each
    out = [{"latent_mean": mean[i]} for i in range(len(samples))]
    if std is not None:
        for i, item in enumerate(out):
            item["latent_std"] = std[i]
    captioned = [i for i, s in enumerate(samples) if s["caption"]]
    if captioned:
        tokens = encoder.encode_text([samples[i]["caption"] for i in captioned])  # (n, L, D)
        for j, i in enumerate(captioned):
            out[i]["text_tokens"] = tokens[j]
    if encoder.image_dim:
        # The recipe's choice: a video's conditioning frame, an image's own (only) frame.
        frames = torch.stack([s["cond_frame"] if s["pixels"].shape[1] > 1 else s["pixels"][:, 0]
                              for s in samples])  # (B, 3, H, W)
        embeds = encoder.encode_image(frames.to(encoder.device))  # (B, D)
        for i, item in enumerate(out):
            item["image_embed"] = embeds[i]
    return out


class CacheWriter:
    """Writes one cache folder: ``write_stream`` per data stream, then ``finish`` (the manifest)."""

    def __init__(self, root: str | os.PathLike, encoder, autoencoder, geometry: dict, shard_size: int = 256,
                 dtype: str = "float32", info: dict | None = None):
        if shard_size < 1:
            raise TFT2VError(f"shard size must be >= 1, got {shard_size}")
        if dtype not in DTYPES:
            raise TFT2VError(f"cache dtype must be one of {list(DTYPES)}, got {dtype!r}")
        missing = [k for k in GEOMETRY if k not in geometry]
        if missing:
            raise TFT2VError(f"cache geometry needs {missing}")
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise TFT2VError(f"{self.root} already holds a cache; write to a new folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.encoder, self.autoencoder = encoder, autoencoder
        self.shard_size, self.dtype = int(shard_size), dtype
        self.manifest = {"format": FORMAT, "version": VERSION, **identity(encoder, autoencoder),
                         "geometry": {k: geometry[k] for k in GEOMETRY}, "dtype": dtype,
                         "info": dict(info or {}), "streams": {}}
        empty = encoder.encode_text([""])[0]  # (L, D)
        save_file({"empty_text": self._store(empty)}, str(self.root / SHARED))

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        # clone: per-sample views of one batch share storage, which safetensors refuses to save.
        return tensor.detach().to("cpu", DTYPES[self.dtype]).contiguous().clone()

    def write_stream(self, name: str, samples: Iterable[dict | None], batch_size: int = 8,
                     progress: Callable[[int, int], None] | None = None, chunk_size: int = 8) -> dict:
        """Encode and store a stream; ``None`` items are samples the source skipped (counted only).

        ``progress(written, skipped)`` is called after every batch. Returns the stream's manifest entry.
        """
        if not name.isidentifier():
            raise TFT2VError(f"cache stream name must be a plain identifier, got {name!r}")
        if name in self.manifest["streams"]:
            raise TFT2VError(f"cache stream {name!r} was already written")
        entry = {"count": 0, "frames": None, "skipped": 0, "shards": []}
        (self.root / name).mkdir(exist_ok=True)
        pending: list[tuple[dict, dict]] = []  # (fields, tensors) waiting for the next shard
        batch: list[dict] = []

        def flush_batch() -> None:
            if not batch:
                return
            for sample, tensors in zip(batch, encode_samples(batch, self.encoder, self.autoencoder, chunk_size)):
                fields = {k: sample[k] for k in ("key", "caption", "meta")}
                pending.append(({**fields, "has_text": bool(sample["caption"])}, tensors))
            entry["count"] += len(batch)
            batch.clear()
            while len(pending) >= self.shard_size:
                self._write_shard(name, entry, pending[: self.shard_size])
                del pending[: self.shard_size]
            if progress is not None:
                progress(entry["count"], entry["skipped"])

        for sample in samples:
            if sample is None:
                entry["skipped"] += 1
                continue
            frames = sample["pixels"].shape[1]
            entry["frames"] = entry["frames"] or frames
            if frames != entry["frames"]:
                raise TFT2VError(f"stream {name!r} mixes {entry['frames']}- and {frames}-frame clips "
                                 f"({sample['key']}); a cache stream holds one clip length")
            if batch and sample["pixels"].shape != batch[0]["pixels"].shape:
                flush_batch()  # one encoder batch holds one shape
            batch.append(sample)
            if len(batch) >= batch_size:
                flush_batch()
        flush_batch()
        if pending:
            self._write_shard(name, entry, pending)
        if entry["count"] == 0:
            raise TFT2VError(f"stream {name!r} gave no usable samples ({entry['skipped']} skipped)")
        self.manifest["streams"][name] = entry
        return entry

    def _write_shard(self, name: str, entry: dict, items: list[tuple[dict, dict]]) -> None:
        rel = f"{name}/{name}-{len(entry['shards']):06d}.safetensors"
        tensors = {f"{i}.{k}": self._store(v) for i, (_, t) in enumerate(items) for k, v in t.items()}
        fields = json.dumps([f for f, _ in items], default=str)
        tmp = self.root / (rel + ".tmp")
        save_file(tensors, str(tmp), metadata={"samples": fields})
        os.replace(tmp, self.root / rel)
        entry["shards"].append({"file": rel, "count": len(items)})

    def finish(self, stats: dict | None = None) -> dict:
        """Write ``manifest.json`` (atomically; the cache is readable from now on) and return it."""
        if not self.manifest["streams"]:
            raise TFT2VError("no stream was written; nothing to cache")
        if stats:
            self.manifest["skips"] = stats
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
        os.replace(tmp, self.root / MANIFEST)
        return self.manifest


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a cache folder, or a one-line error saying why it is not a cache."""
    path = Path(root) / MANIFEST
    manifest = read_json(path, f"{root} is not a finished tft2v cache (no {MANIFEST}; run tft2v precompute)")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TFT2VError(f"{path} is not a tft2v cache manifest")
    if manifest.get("version") != VERSION:
        raise TFT2VError(f"{path} has cache version {manifest.get('version')}, this tft2v reads {VERSION}")
    return manifest


def check_manifest(manifest: dict, encoder=None, autoencoder=None, geometry: dict | None = None,
                   where: str = "the cache") -> None:
    """Raise a one-line TFT2VError when the cache was built with other models or another geometry."""
    want = identity(encoder, autoencoder) if encoder is not None and autoencoder is not None else {}
    for part in ("encoder", "autoencoder"):
        for key, value in want.get(part, {}).items():
            have = manifest[part].get(key)
            if have != value:
                raise TFT2VError(f"{where} was built with {part} {key} {have!r}, this run uses {value!r}; "
                                 f"rebuild it with tft2v precompute")
    for key, value in (geometry or {}).items():
        have = manifest["geometry"].get(key)
        if have is None or float(have) != float(value):
            raise TFT2VError(f"{where} was built with data.{key} {have!r}, this run uses {value!r}; "
                             f"rebuild it with tft2v precompute")


class CachedSource(IterableDataset):
    """One stream of a cache as CACHED SAMPLEs (see module doc); the sources' conventions.

    Sharded over ranks and DataLoader workers (global shard ``rank * num_workers + worker``); each
    epoch is a permutation seeded by (seed, epoch), the same on every reader, so shards are disjoint.
    ``iter(source)`` reads one epoch; ``iter_from(n)`` is endless, epoch after epoch, starting at this
    reader's n-th sample — the mixing loader resumes with it in O(1).
    """

    def __init__(self, root: str | os.PathLike, stream: str, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.root, self.manifest = Path(root), read_manifest(root)
        if stream not in self.manifest["streams"]:
            raise TFT2VError(f"cache {root} has no {stream!r} stream (it has {sorted(self.manifest['streams'])})")
        if not 0 <= rank < world_size:
            raise TFT2VError(f"rank {rank} is outside world_size {world_size}")
        self.stream, self.seed, self.shuffle = stream, int(seed), shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.shards = self.manifest["streams"][stream]["shards"]
        self._starts = np.cumsum([0] + [s["count"] for s in self.shards]).tolist()
        self._files: dict[str, object] = {}
        self._empty_text: torch.Tensor | None = None

    def __len__(self) -> int:
        return self._starts[-1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> np.ndarray:
        return shard_indices(len(self), self.seed, epoch, *worker_shard(self.rank, self.world_size), self.shuffle)

    def __iter__(self) -> Iterator[dict]:
        return (self.sample(int(i)) for i in self._order(self.epoch))

    def iter_from(self, start: int) -> Iterator[dict]:
        """Endless stream from this reader's ``start``-th sample (counted from epoch ``self.epoch``)."""
        shard, num_shards = worker_shard(self.rank, self.world_size)
        first = start + self.epoch * shard_length(len(self), shard, num_shards)
        sampler = EpochSampler(len(self), self.seed, shard, num_shards, self.shuffle, first)
        for epoch, index, position in sampler:
            yield {**self.sample(index), "epoch": epoch, "position": position - first + start}

    def _open(self, rel: str):
        # Opened lazily in the reading process (DataLoader workers must not share handles).
        if rel not in self._files:
            path = self.root / rel
            if not path.is_file():
                raise TFT2VError(f"cache shard missing: {path}")
            handle = safe_open(str(path), framework="pt")
            self._files[rel] = (handle, json.loads(handle.metadata()["samples"]))
        return self._files[rel]

    def sample(self, index: int) -> dict:
        """The stream's ``index``-th CACHED SAMPLE (tensors float32)."""
        j = bisect.bisect_right(self._starts, index) - 1
        handle, fields = self._open(self.shards[j]["file"])
        i = index - self._starts[j]
        out = dict(fields[i])
        for name in ("latent_mean", "latent_std", "text_tokens", "image_embed"):
            key = f"{i}.{name}"
            if key in handle.keys():
                out[name] = handle.get_tensor(key).float()
        if "text_tokens" not in out:
            if self._empty_text is None:
                with safe_open(str(self.root / SHARED), framework="pt") as f:
                    self._empty_text = f.get_tensor("empty_text").float()
            out["text_tokens"] = self._empty_text
        return out

    def __getstate__(self) -> dict:
        # Shard handles stay in the process that opened them.
        return {**self.__dict__, "_files": {}}


def collate_cached(samples: list[dict]) -> dict:
    """CACHED SAMPLEs -> a BATCH: latent_mean/latent_std (B, C, F, h, w), text_tokens (B, L, D),
    image_embed (B, D), has_text (B,) bool; caption/key/meta lists."""
    if not samples:
        raise TFT2VError("cannot collate an empty list of cached samples")
    shapes = {tuple(s["latent_mean"].shape) for s in samples}
    if len(shapes) != 1:
        raise TFT2VError(f"cached samples in one batch have different latent shapes {sorted(shapes)}")
    batch = {k: torch.stack([s[k] for s in samples])
             for k in ("latent_mean", "latent_std", "text_tokens", "image_embed") if k in samples[0]}
    return {**batch, "caption": [s["caption"] for s in samples],
            "has_text": torch.tensor([bool(s["has_text"]) for s in samples], dtype=torch.bool),
            "key": [s["key"] for s in samples], "meta": [s["meta"] for s in samples]}
