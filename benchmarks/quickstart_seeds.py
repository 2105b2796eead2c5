"""The quickstart's fixed plan retrained with several training seeds: each claim's verdict per seed.

The quickstart's own intervals cover the sampling of clips from one trained model; this repeats the
whole run (data order, initialisation, noise draws, sampling seeds all follow the seed) to show how much
the verdicts depend on the training seed. Prints one JSON line; each run's report stays in OUT/seed_<k>/.

    python benchmarks/quickstart_seeds.py --out quickstart_seeds --seeds 0 1 2 [--plan default]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def summary(run: Path) -> dict:
    """Verdicts and headline figures of one finished quickstart folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    claims = json.loads((run / "claims.json").read_text())

    def pick(variant: str, kind: str, key: str):
        part = (metrics.get(variant) or {}).get(kind) or {}
        value = part.get(key)
        return None if value is None else round(value, 3)

    return {
        "verdicts": [c["verdict"] for c in claims],
        "tft2v": {"colour": pick("tft2v", "appearance", "colour_accuracy"),
                  "shape": pick("tft2v", "appearance", "shape_accuracy"),
                  "coherent": pick("tft2v", "appearance", "coherent_fraction")},
        "text_free_coherent": pick("text_free", "appearance", "coherent_fraction"),
        "images_only_coherent": pick("images_only", "appearance", "coherent_fraction"),
        "semi_supervised_direction": pick("semi_supervised", "direction", "direction_accuracy"),
        "text_free_direction": pick("text_free", "direction", "direction_accuracy"),
        # Claim 3 reads every clip of the two variants; claim 5 the compositional model's conditioned clips.
        "colour_shape_all": {v: [pick(v, "all", "colour_accuracy"), pick(v, "all", "shape_accuracy")]
                             for v in ("tft2v", "semi_supervised")},
        "compositional_follows": {k: None if v["follow_accuracy"] is None else round(v["follow_accuracy"], 3)
                                  for k, v in ((metrics.get("compositional") or {}).get("conditioned") or {}).items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="quickstart_seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plan", default="default")  # each run on the quickstart's own fixed thread count
    args = ap.parse_args()

    from tft2v.quickstart import run_quickstart

    runs = {}
    for seed in args.seeds:
        run = Path(args.out) / f"seed_{seed}"
        if not (run / "claims.json").is_file():  # a finished seed is not rerun
            t0 = time.perf_counter()
            run_quickstart(run, seed=seed, plan=args.plan, log=lambda *_: None)
            (run / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
        runs[seed] = {**summary(run), "wall_s": float((run / "wall_s.txt").read_text())}
        print(json.dumps({"seed": seed, **runs[seed]}, ensure_ascii=False), flush=True)
    print(json.dumps({"benchmark": "quickstart_seeds", "plan": args.plan, "runs": runs}, ensure_ascii=False))


if __name__ == "__main__":
    main()
