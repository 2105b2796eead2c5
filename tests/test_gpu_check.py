"""benchmarks/gpu_check.py prints one JSON line: every part reported, none hidden by another's failure.

On a CPU-only machine the CUDA parts say "skipped: no CUDA"; ``--quick`` also runs each part's logic on
the CPU at small sizes ("cpu_dry_run"), which is what keeps the script working between GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARTS = ["compositional_step", "bf16_step", "fsdp_1gpu", "cpu_offload_generation", "generation_memory", "train_mfu",
         "lora_train_memory", "refine_memory_720p"]


def _gpu_check(*args: str, timeout: float) -> dict:
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), *args], capture_output=True, text=True,
                       cwd=REPO, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}: {r.stdout[-2000:]}"
    report = json.loads(lines[0])
    assert report["benchmark"] == "gpu_check" and list(report["parts"]) == PARTS
    return report


@pytest.mark.skipif(torch.cuda.is_available(), reason="without --quick a CUDA machine runs the full check")
def test_without_cuda_every_part_is_skipped():
    report = _gpu_check(timeout=300)
    assert report["device"] == "cpu" and not report["quick"]
    assert all(part == {"status": "skipped: no CUDA"} for part in report["parts"].values())


@pytest.mark.slow
def test_quick_runs_every_part_end_to_end():
    report = _gpu_check("--quick", timeout=840)
    assert report["quick"]
    for name, part in report["parts"].items():
        if torch.cuda.is_available():
            assert part["status"] in ("pass", "ok"), (name, part)
            continue
        assert part["status"] == "skipped: no CUDA", (name, part)
        dry = part["cpu_dry_run"]
        assert "error" not in dry and dry["status"] in ("pass", "ok", "ran (no CUDA peak on cpu)"), (name, dry)
    dry = {name: part.get("cpu_dry_run", part) for name, part in report["parts"].items()}
    assert len(dry["compositional_step"]["conditions"]) == 6
    assert dry["bf16_step"]["bf16_output_dtype"] == ["torch.bfloat16"]
    assert dry["fsdp_1gpu"]["fsdp2"] and dry["fsdp_1gpu"]["param_type"] == "DTensor"
    assert dry["cpu_offload_generation"]["components_after"] == ["cpu"]
    assert dry["generation_memory"]["output_finite"]
    assert dry["train_mfu"]["mfu"] > 0
    assert dry["refine_memory_720p"]["output_finite"] and dry["refine_memory_720p"]["output_shape"] == [1, 3, 2, 80, 64]
    lora = dry["lora_train_memory"]
    assert lora["lora"]["trainable_share"] < 0.5 < lora["full"]["trainable_share"] == 1.0  # tiny width: rank 16 is large


def test_a_failing_part_is_recorded_not_raised():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)

    def broken(device, args):
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")

    result = gpu_check.run_part(broken, "cpu", None)
    assert result["status"] == "error"
    assert result["error"] == "RuntimeError: CUDA error: device-side assert triggered"
