"""One compositional-stage probe: continue a TF-T2V model folder with conditions under config overrides,
then check each trained condition on fresh clips with ``compositional_check.py``.

The quickstart's compositional variant (tft2v.quickstart.VARIANTS) is the starting config; ``--set`` merges
JSON overrides into it (``{"data": {"video_batch_size": 8}, "recipe": {"conditions": ["motion"]}}``). The
table in docs/research/compositional.md came from these runs. Prints one JSON line.

    python benchmarks/compositional_probe.py quickstart_out/runs/tft2v/model --steps 150 --out probe_p6 \\
        --set '{"recipe": {"video_high_noise_share": 0.5}, "data": {"image_batch_size": 4, "video_batch_size": 4}}'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", type=Path, help="a TF-T2V model folder (e.g. quickstart_out/runs/tft2v/model)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--set", default="{}", help="JSON config overrides merged into the compositional variant's")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("compositional_probe"))
    args = ap.parse_args()

    from tft2v import quickstart as q

    torch.set_num_threads(q.QUICKSTART_THREADS)
    variant = next(v for v in q.VARIANTS if v.name == "compositional")
    overrides = json.loads(args.set)
    cfg = q.merge_config(q.variant_config(q.BASE_CONFIG, variant, str(args.init), args.steps, args.seed,
                                          args.out / "run"), overrides)
    summary = q._train(cfg, lambda line: print(line, file=sys.stderr))
    checks = {}
    for name in cfg["recipe"]["conditions"]:
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("compositional_check.py")),
                               summary["model"], "--out", str(args.out / f"check_{name}"), "--condition", name],
                              capture_output=True, text=True, check=True)
        checks[name] = json.loads(done.stdout.strip().splitlines()[-1])["scores"]
    print(json.dumps({"benchmark": "compositional_probe", "init": str(args.init), "steps": args.steps,
                      "overrides": overrides, "train_s": summary["wall_s"], "checks": checks}))


if __name__ == "__main__":
    main()
