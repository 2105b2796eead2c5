"""OpenCLIP ViT-H/14 as VGen uses it, without importing ``open_clip`` (it needs torchvision).

An OpenCLIP state dict (``open_clip_pytorch_model.bin`` style: ``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``,
``visual.conv1``, ``visual.class_embedding``, ``visual.transformer.resblocks.N.*``, ``visual.proj``,
``logit_scale``) is renamed into a ``transformers.CLIPModel`` whose ``CLIPConfig`` is read off the
tensor shapes. The two implementations compute the same function: pre-LN blocks, fused q/k/v
``in_proj`` split into q/k/v, scale head_dim^-0.5, causal text mask, class-token pooling with
``ln_post`` then ``proj``. Activation is exact GELU (OpenCLIP's ViT-H/14 does not use quick_gelu).

As in VGen: text tokens = the penultimate block's output (the last resblock skipped) through
``ln_final``, 77 tokens of 1024-d, padded with id 0 after EOT; image = the pooled projected 1024-d
embedding, with CLIP preprocessing (mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954,
0.26130258, 0.27577711)). Videos elsewhere are ``(B, C, F, H, W)``; pass one frame here.

The tokenizer is transformers' ``CLIPTokenizer`` built from OpenCLIP's BPE merges file
(``bpe_simple_vocab_16e6.txt.gz``, shipped inside ``open-clip-torch``) or read from a tokenizer folder.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import torch

from tft2v.encoders.hf_clip import HFClipEncoder, load_clip_tokenizer
from tft2v.errors import CheckpointError, TFT2VError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_BPE_MERGES = 49152 - 256 - 2  # OpenCLIP reads this many merges: 49408 tokens in all
OPENCLIP_PAD_ID = 0
# Non-persistent in current open_clip, but present in some older checkpoints; carries no weights.
IGNORED_KEYS = {"attn_mask", "visual.attn_mask"}
# OpenCLIP model configs with a head width other than 64 (vision width -> heads).
VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}  # ViT-H/14, ViT-g/14, ViT-bigG/14


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table: printable bytes map to themselves, others to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tokenizer_from_bpe(path: str | Path):
    """A transformers ``CLIPTokenizer`` from an OpenCLIP/OpenAI BPE merges file (.txt or .txt.gz).

    Vocabulary order is OpenCLIP's: 256 byte characters, the same with ``</w>``, one token per merge,
    then SOT and EOT (ids 49406, 49407 for the full file).
    """
    from transformers import CLIPTokenizer

    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"BPE vocabulary file {path} does not exist")
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    lines = raw.decode("utf-8").split("\n")[1 : NUM_BPE_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    if any(len(m) != 2 for m in merges):
        raise TFT2VError(f"{path} is not a BPE merges file (expected 'left right' pairs after a header line)")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
        bos_token=SOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
    )


def load_openclip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenCLIP checkpoint (.bin/.pt/.pth via ``weights_only`` torch.load, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"OpenCLIP weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user error
        raise CheckpointError(f"cannot read OpenCLIP weights {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "token_embedding.weight" not in state:
        raise CheckpointError(f"{path} is not an OpenCLIP state dict (no 'token_embedding.weight')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _num_blocks(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)


def openclip_config(state: dict, text_heads: int | None = None, vision_heads: int | None = None,
                    activation: str = "gelu"):
    """A ``transformers.CLIPConfig`` matching an OpenCLIP state dict's shapes.

    Head counts are not visible in shapes: text defaults to width / 64, vision to OpenCLIP's
    ViT-H/g/bigG head counts (16) or width / 64.
    """
    from transformers import CLIPConfig

    required = ["positional_embedding", "text_projection", "visual.conv1.weight", "visual.positional_embedding",
                "visual.proj", "transformer.resblocks.0.mlp.c_fc.weight",
                "visual.transformer.resblocks.0.mlp.c_fc.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"OpenCLIP state dict lacks {missing}; only the standard CLIP layout is supported")
    vocab_size, text_width = state["token_embedding.weight"].shape
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    embed_dim = state["visual.proj"].shape[1]
    if state["text_projection"].shape[1] != embed_dim:
        raise CheckpointError("OpenCLIP text and image projections differ in size; CLIPModel needs one size")
    text = dict(
        vocab_size=vocab_size, hidden_size=text_width,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_num_blocks(state, "transformer.resblocks."),
        num_attention_heads=text_heads or text_width // 64,
        max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=activation,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=OPENCLIP_PAD_ID,
    )
    vision = dict(
        hidden_size=vision_width,
        intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_num_blocks(state, "visual.transformer.resblocks."),
        num_attention_heads=vision_heads or VISION_HEADS.get(vision_width, vision_width // 64),
        image_size=grid * patch, patch_size=patch, hidden_act=activation,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _rename_block(state: dict, src: str, dst: str, out: dict) -> None:
    """One OpenCLIP resblock (fused in_proj) -> one transformers CLIPEncoderLayer."""
    q_w, k_w, v_w = state.pop(f"{src}attn.in_proj_weight").chunk(3, dim=0)
    q_b, k_b, v_b = state.pop(f"{src}attn.in_proj_bias").chunk(3, dim=0)
    for name, w, b in (("q", q_w, q_b), ("k", k_w, k_b), ("v", v_w, v_b)):
        out[f"{dst}self_attn.{name}_proj.weight"], out[f"{dst}self_attn.{name}_proj.bias"] = w, b
    for old, new in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        for param in ("weight", "bias"):
            out[f"{dst}{new}.{param}"] = state.pop(f"{src}{old}.{param}")


def convert_openclip_state_dict(state: dict, config) -> dict[str, torch.Tensor]:
    """OpenCLIP key layout -> ``transformers.CLIPModel`` keys; leftover OpenCLIP keys are an error."""
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    out = {
        "logit_scale": state.pop("logit_scale"),
        "text_model.embeddings.token_embedding.weight": state.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": state.pop("positional_embedding"),
        "text_model.final_layer_norm.weight": state.pop("ln_final.weight"),
        "text_model.final_layer_norm.bias": state.pop("ln_final.bias"),
        "text_projection.weight": state.pop("text_projection").T,  # x @ P  ==  Linear with weight P^T
        "vision_model.embeddings.class_embedding": state.pop("visual.class_embedding"),
        "vision_model.embeddings.patch_embedding.weight": state.pop("visual.conv1.weight"),
        "vision_model.embeddings.position_embedding.weight": state.pop("visual.positional_embedding"),
        "vision_model.pre_layrnorm.weight": state.pop("visual.ln_pre.weight"),
        "vision_model.pre_layrnorm.bias": state.pop("visual.ln_pre.bias"),
        "vision_model.post_layernorm.weight": state.pop("visual.ln_post.weight"),
        "vision_model.post_layernorm.bias": state.pop("visual.ln_post.bias"),
        "visual_projection.weight": state.pop("visual.proj").T,
    }
    for i in range(config.text_config.num_hidden_layers):
        _rename_block(state, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    for i in range(config.vision_config.num_hidden_layers):
        _rename_block(state, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out)
    if state:
        raise CheckpointError(f"unexpected OpenCLIP keys (unsupported layout): {sorted(state)[:8]}")
    return {k: v.contiguous() for k, v in out.items()}


def load_openclip_as_clip_model(path_or_state, text_heads=None, vision_heads=None, activation="gelu"):
    """OpenCLIP weights (path or state dict) -> an eval-mode ``transformers.CLIPModel`` in float32."""
    from transformers import CLIPModel

    state = load_openclip_state_dict(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    config = openclip_config(state, text_heads, vision_heads, activation)
    try:
        converted = convert_openclip_state_dict(state, config)
    except KeyError as err:
        raise CheckpointError(f"OpenCLIP state dict is missing key {err.args[0]!r}") from None
    model = CLIPModel(config)
    result = model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"OpenCLIP conversion mismatch: missing {result.missing_keys[:8]}, "
                              f"unexpected {result.unexpected_keys[:8]}")
    return model.eval()


class OpenCLIPEncoder(HFClipEncoder):
    """VGen's text/image embedder: penultimate-layer text tokens (B, 77, 1024), image (B, 1024)."""

    kind = "openclip"

    def __init__(self, weights: str | Path, tokenizer: str | Path, layer: str = "penultimate",
                 text_heads: int | None = None, vision_heads: int | None = None, activation: str = "gelu"):
        """``weights``: an OpenCLIP state-dict file; ``tokenizer``: a BPE merges file or a tokenizer folder."""
        model = load_openclip_as_clip_model(weights, text_heads, vision_heads, activation)
        tok = load_clip_tokenizer(tokenizer) if Path(tokenizer).is_dir() else tokenizer_from_bpe(tokenizer)
        super(HFClipEncoder, self).__init__()
        self._setup(model, tok, layer, None, OPENCLIP_PAD_ID)
