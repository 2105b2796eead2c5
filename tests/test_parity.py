"""Numeric parity with VGen's UNetSD_TFT2V on the randomized tiny models in shared/vectors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tft2v.convert import infer_vgen_config, load_state_dict_file, load_vgen_unet
from tests._tiny import shared_dir

COND_ARGS = ("depth", "sketch", "motion", "local_image", "single_sketch", "masked")


def _cases():
    try:
        cfg = json.loads((shared_dir() / "vectors" / "parity_configs.json").read_text())
    except pytest.skip.Exception:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="no shared vectors"))]
    return [pytest.param(m, c, id=f"{m['name']}-{c['output']}") for m in cfg["models"] for c in m["cases"]]


_models: dict = {}


@pytest.mark.parametrize("model_cfg,case", _cases())
def test_vgen_parity(model_cfg, case):
    vec = shared_dir() / "vectors"
    key = model_cfg["name"]
    if key not in _models:
        _models[key] = load_vgen_unet(vec / model_cfg["weights"], model_cfg["config"])
    model = _models[key]
    io = load_file(str(vec / model_cfg["io"]))
    ins = case["inputs"]
    y = io[ins["y"]] if "y" in ins else io["zero_y"]
    conditions = {k: io[v] for k, v in ins.items() if k in COND_ARGS} or None
    image = io[ins["image"]] if "image" in ins else None
    with torch.no_grad():
        out = model(io[ins["x"]], io[ins["t"]], y, image_embeds=image, conditions=conditions)
    err = (out - io[case["output"]]).abs().max().item()
    assert err <= 1e-4, f"{case['output']}: max abs error {err:.3e}"


def test_infer_vgen_config_matches_parity_config():
    vec = shared_dir() / "vectors"
    cfg = json.loads((vec / "parity_configs.json").read_text())
    for m in cfg["models"]:
        inferred = infer_vgen_config(load_state_dict_file(vec / m["weights"]), head_dim=16,
                                     resolution=tuple(m["config"]["resolution"]))
        for k in ("dim", "dim_mult", "num_res_blocks", "num_heads", "context_dim", "num_tokens", "video_compositions"):
            want = m["config"][k]
            got = inferred[k]
            assert (sorted(got) == sorted(want)) if k == "video_compositions" else got == want, k
        assert [float(s) for s in inferred["attn_scales"]] == [float(s) for s in m["config"]["attn_scales"]]
