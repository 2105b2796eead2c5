"""Quickstart results built from ground-truth and hand-made clips, for the claim and report tests."""

import torch

from tft2v.data import shapes_spec as spec
from tft2v.data.toy import generate
from tft2v.metrics.toy import evaluate_toy, summarise
from tft2v.metrics.toy_conditions import follow_condition
from tft2v.quickstart import VARIANTS


def truth_clips(kind, n, seed):
    """``n`` ground-truth clips (n, 3, F, H, W) of a toy set and their truths."""
    data = generate(kind, n, seed=seed)
    return torch.stack([data.sample(i)["pixels"] for i in range(n)]), [data.truth(i) for i in range(n)]


def still(clips):
    """Every frame replaced by the first: the object stays where it starts."""
    return clips[:, :, :1].expand_as(clips).clone()


def variant_result(variant, clips, app_prompts, dir_prompts):
    """One variant's results as run_quickstart builds them (appearance clips, then direction clips)."""
    everything = torch.cat([clips, clips]) if dir_prompts else clips
    prompts = app_prompts + dir_prompts
    every = evaluate_toy(everything, prompts)
    head, tail = every["clips"][:len(app_prompts)], every["clips"][len(app_prompts):]
    return {"variant": variant, "clips": everything, "prompts": prompts, "seeds": [1000 + i for i in range(len(prompts))],
            "kinds": ["appearance"] * len(app_prompts) + ["direction"] * len(dir_prompts),
            "sampling": {"scheduler": "dpmpp", "steps": 8, "guidance": 3.0, "negative_prompt": ""},
            "train": {"loss_last": 0.1, "checkpoint": "/nonexistent/run/checkpoints/x", "model": "/nonexistent/model"},
            "appearance": {**summarise(head), "clips": head},
            "direction": {**summarise(tail), "clips": tail} if dir_prompts else None, "all": every}


def compositional_result(variant, plain, steered: dict, sources, truths, prompts):
    """The compositional variant's results: ``plain`` clips without a condition, ``steered`` {condition name:
    clips} sampled with the condition of ``sources`` (ground truth with ``truths``), all on ``prompts``."""
    kinds = ("none", *steered)
    clips = torch.cat([plain, *steered.values()])
    every = evaluate_toy(clips, prompts * len(kinds))
    n = len(prompts)
    for i, c in enumerate(every["clips"]):
        c.update(follow_condition(c, truths[i % n]["motion"], truths[i % n]["track"]))
    head = every["clips"][:n]
    return {"variant": variant, "clips": clips, "prompts": prompts * len(kinds), "seeds": [1000 + i % n for i in range(len(clips))],
            "kinds": ["appearance"] * n + [k for k in steered for _ in prompts],
            "sampling": {"scheduler": "dpmpp", "steps": 8, "guidance": 3.0, "negative_prompt": ""},
            "train": {"loss_last": 0.1, "checkpoint": "/nonexistent/run/checkpoints/x", "model": "/nonexistent/model"},
            "appearance": {**summarise(head), "clips": head}, "direction": None, "all": every,
            "conditioned": {k: every["clips"][j * n:(j + 1) * n] for j, k in enumerate(kinds)},
            "condition_clips": {"clips": sources, "truth": truths},
            "condition_index": [None] * n + list(range(n)) * len(steered)}


def fake_results(good: bool, clips: dict | None = None, steered: dict | None = None):
    """Variant results built from ground-truth clips: 'good' makes claims 1, 3 and 5 true, else false.
    ``clips`` replaces a variant's clips (same prompts and seeds); ``steered`` the compositional model's
    conditioned clips {condition: clips}."""
    moving, truth = truth_clips("videos", 12, 0)
    app_prompts = [spec.caption(t["colour"], t["shape"]) for t in truth]
    right = [spec.caption(t["colour"], t["shape"], t["motion"]) for t in truth]
    other = [next(c for c in spec.COLOURS if c != t["colour"]) for t in truth]
    wrong_colour = [spec.caption(c, t["shape"]) for c, t in zip(other, truth)]
    wrong_colour_moving = [spec.caption(c, t["shape"], t["motion"]) for c, t in zip(other, truth)]
    results = {}
    for v in VARIANTS:
        if v.name == "compositional":
            sources = moving
            steer = steered or {name: sources if good else still(sources) for name in ("motion", "sketch")}
            results[v.name] = compositional_result(v, still(moving), steer, sources, truth, app_prompts)
            continue
        x = (clips or {}).get(v.name, still(moving) if (v.name == "images_only" or not good) else moving)
        # Claim 3: the semi-supervised clips show their prompts' colours; the text-free ones another colour.
        prompts, directed = (wrong_colour, wrong_colour_moving) if (v.name == "tft2v" and good) else (app_prompts, right)
        results[v.name] = variant_result(v, x, prompts, [] if v.name == "images_only" else directed)
    return results
