"""How much a shapes-world model listens to its caption, per noise level: a probe of text control.

On held-out captioned clips (``a red circle moving left``), each clip is noised at a fixed timestep
with one noise draw, and the UNet's v-prediction loss is compared under four captions: the true one,
the same with the **opposite direction**, without the motion words, and the empty caption. A model
that has learned direction control predicts better with the true caption than with the opposite one
(``direction_gain`` > 0, ``true_beats_opposite`` > 0.5) at high noise, where the clip itself does not
yet reveal the motion; ``caption_effect`` is the output change from the empty caption to the true one,
relative to the output size (how much the text matters at all). Prints one JSON line.

    python benchmarks/text_sensitivity.py MODEL_DIR [--clips 32]   # e.g. quickstart_out/runs/semi_supervised/model
"""

from __future__ import annotations

import argparse
import json

import torch

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TIMESTEPS = (300, 600, 800, 900, 970)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tft2v.data import shapes_spec as spec
    from tft2v.data.toy import generate
    from tft2v.diffusion import build_training_scheduler, noisy_inputs
    from tft2v.pipeline import TFT2VPipeline

    pipe = TFT2VPipeline.from_pretrained(args.model)
    unet = pipe.unet.eval()
    data = generate("captioned_videos", args.clips, seed=99)  # the quickstart trains on seed 0's set
    pixels = torch.stack([data.sample(i)["pixels"] for i in range(args.clips)])  # (N, 3, F, H, W)
    parts = [spec.parse_caption(data.caption(i)) for i in range(args.clips)]
    captions = {
        "true": [spec.caption(c, s, m) for c, s, m in parts],
        "opposite": [spec.caption(c, s, OPPOSITE[m]) for c, s, m in parts],
        "no_motion": [spec.caption(c, s) for c, s, _ in parts],
        "empty": [""] * args.clips,
    }
    cfg = pipe.noise_schedule  # the training schedule the model folder was saved with
    scheduler = build_training_scheduler(cfg)
    results = {}
    with torch.no_grad():
        latents = pipe.autoencoder.encode(pixels)
        text = {k: pipe.encoder.encode_text(v) for k, v in captions.items()}
        for t in TIMESTEPS:
            g = torch.Generator().manual_seed(t)
            x_t, ts, target = noisy_inputs(scheduler, latents, cfg, g, t=torch.full((args.clips,), t))
            out = {k: unet(x_t, ts, encoder_hidden_states=e) for k, e in text.items()}
            loss = {k: ((o - target) ** 2).mean(dim=(1, 2, 3, 4)) for k, o in out.items()}  # (N,)
            gain = loss["opposite"] - loss["true"]
            results[t] = {
                **{f"loss_{k}": round(float(v.mean()), 5) for k, v in loss.items()},
                "direction_gain": round(float(gain.mean() / loss["true"].mean()), 5),
                "true_beats_opposite": round(float((gain > 0).float().mean()), 3),
                "caption_effect": round(float((out["true"] - out["empty"]).abs().mean() / out["true"].abs().mean()), 5),
            }
    print(json.dumps({"benchmark": "text_sensitivity", "model": args.model, "clips": args.clips, "by_timestep": results}))


if __name__ == "__main__":
    main()
