"""The CLIP text encoder and tokenizer of SD 1.x / 2.x checkpoints, offline.

The text encoder is converted here (the original SD1 layout and SD2's OpenCLIP layout) and loaded
strictly into ``transformers.CLIPTextModel``, whichever key layout that transformers version uses
(transformers 5.x dropped the ``text_model.`` prefix). The CLIP BPE tokenizer files cannot be
shipped or downloaded: they are looked up in folders the caller names (the ComfyUI node passes
ComfyUI's own ``comfy/sd1_tokenizer``), see :func:`find_clip_tokenizer`, else taken from an
installed ``open_clip_torch`` (:mod:`.clip_vocab`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .sd_checkpoint import SD1_TEXT, SD2_TEXT, read_checkpoint

__all__ = ["cast_module", "find_clip_tokenizer", "load_clip_tokenizer", "require_clip_tokenizer",
           "text_encoder_from_folder", "text_encoder_from_single_file"]


def cast_module(module, dtype: torch.dtype):
    """``module`` in ``dtype`` (diffusers' ``.to(dtype)`` logs a spurious warning, ``.half()`` & co. do not)."""
    cast = {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}.get(dtype)
    if cast is None:
        raise ValueError(f"dtype: expected float16, bfloat16 or float32, got {dtype}")
    return cast()


# ----------------------------------------------------------------------------------------------
# Text encoder: original layouts -> transformers CLIPTextModel (either key layout)


def _sd1_text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith(SD1_TEXT):
            rest = k[len(SD1_TEXT):]
            out[rest if rest.startswith("text_model.") else "text_model." + rest] = v
    return out


_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _sd2_text_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP's text tower (SD2 checkpoints) in transformers' CLIP names.

    SD2 conditions on the penultimate layer: the diffusers config has one layer fewer than the
    checkpoint (23 of 24), and the last one is not loaded.
    """
    src = {k[len(SD2_TEXT):]: v for k, v in state.items() if k.startswith(SD2_TEXT)}
    out = {"text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
           "text_model.final_layer_norm.weight": src["ln_final.weight"],
           "text_model.final_layer_norm.bias": src["ln_final.bias"]}
    for i in range(num_layers):
        pre, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        if pre + "attn.in_proj_weight" not in src:
            raise KeyError(pre + "attn.in_proj_weight")
        for a, b in _OPEN_CLIP_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = src[f"{pre}{a}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = src[f"{pre}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{p}"], out[f"{dst}self_attn.k_proj.{p}"] = q, k
            out[f"{dst}self_attn.v_proj.{p}"] = v
    return out


def _load_clip_text_state(model, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``text_model.``-prefixed or flat CLIP text keys into ``model`` (either layout), strictly."""
    target = model.state_dict().keys()
    prefixed = any(k.startswith("text_model.") for k in target)
    fitted = {}
    for k, v in state.items():
        bare = k[len("text_model."):] if k.startswith("text_model.") else k
        fitted["text_model." + bare if prefixed else bare] = v
    fitted = {k: v for k, v in fitted.items() if k in target}
    missing = [k for k in target if k not in fitted and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{what}: the text encoder weights lack {len(missing)} tensors the config expects, e.g. "
                         f"{missing[:3]}; the checkpoint and the config do not match")
    try:
        model.load_state_dict(fitted, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{what}: the text encoder weights do not fit the config: {str(e)[:400]}") from None
    # position_ids is a buffer that checkpoints do not hold: made here, as the model's __init__ does
    for m in model.modules():
        ids = m._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            n = model.config.max_position_embeddings
            m.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
    left = [k for k, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{what}: the text encoder weights lack {left[:3]}; the checkpoint and the config do not "
                         "match")


def _empty_clip_text_model(config):
    """A ``CLIPTextModel`` of ``config`` on the meta device: no memory and no random initialisation
    (which took about 3 s per model on a CPU for SD 2's text encoder); the weights are assigned
    from the checkpoint afterwards (:func:`_load_clip_text_state`)."""
    from transformers import CLIPTextModel

    with torch.device("meta"):
        return CLIPTextModel(config)


def text_encoder_from_single_file(state, config_dir: Path, family: str, dtype, what: str):
    """The ``CLIPTextModel`` of ``config_dir/text_encoder`` with the text weights of a single-file
    checkpoint ``state`` (SD1 or SD2 layout, ``family``), in ``dtype``, eval mode."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    model = _empty_clip_text_model(config)
    try:
        text_state = _sd1_text_state(state) if family == "sd1" else _sd2_text_state(state, config.num_hidden_layers)
    except KeyError as e:
        raise ValueError(f"{what}: the text encoder lacks {e.args[0]!r} (the config asks for "
                         f"{config.num_hidden_layers} layers)") from None
    _load_clip_text_state(model, text_state, what)
    return cast_module(model, dtype).eval()


def _read_component_weights(folder: Path, what: str) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin"):
        if (folder / name).is_file():
            return read_checkpoint(folder / name, what=what)
    shards = sorted(folder.glob("model-*.safetensors"))
    if shards:
        out = {}
        for s in shards:
            out.update(read_checkpoint(s, what=what))
        return out
    raise FileNotFoundError(f"{what}: no weights in {folder} (expected model.safetensors or pytorch_model.bin)")


def text_encoder_from_folder(folder: Path, dtype, what: str):
    """The ``CLIPTextModel`` of a diffusers ``text_encoder`` folder (config + weights), in ``dtype``, eval mode."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
    model = _empty_clip_text_model(config)
    _load_clip_text_state(model, _read_component_weights(folder, what), what)
    return cast_module(model, dtype).eval()


# ----------------------------------------------------------------------------------------------
# Tokenizer


def find_clip_tokenizer(candidates) -> Path | None:
    """The first folder in ``candidates`` that holds a CLIP BPE tokenizer.

    A tokenizer folder has ``vocab.json`` and ``merges.txt`` (what ComfyUI ships in
    ``comfy/sd1_tokenizer``, and what transformers 4.x writes) or ``tokenizer.json`` (what
    transformers 5.x writes). Folders that do not exist are skipped.
    """
    for c in candidates:
        if c is None:
            continue
        p = Path(c)
        if (p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()):
            return p
    return None


def require_clip_tokenizer(candidates, what: str) -> Path:
    """:func:`find_clip_tokenizer`, else the vocabulary of an installed ``open_clip_torch``
    (:mod:`.clip_vocab`); raises ``FileNotFoundError`` (says where to put one) if neither."""
    folder = find_clip_tokenizer(candidates)
    if folder is None:  # last: the vocabulary open_clip_torch ships (the same tokens, clip_vocab.py)
        from .clip_vocab import packaged_clip_tokenizer_dir

        folder = packaged_clip_tokenizer_dir()
    if folder is None:
        looked = [str(c) for c in candidates if c is not None]
        raise FileNotFoundError(
            f"{what}: no CLIP tokenizer found (looked in {looked}). The pack cannot download it: install the CLIP "
            "vocabulary with `pip install open_clip_torch` (the extra comboverse[clip-vocab]), or put vocab.json and "
            "merges.txt (or tokenizer.json) of openai/clip-vit-large-patch14 into a folder named 'tokenizer' next to "
            "the checkpoint (or into the diffusers folder's tokenizer/). Inside ComfyUI the tokenizer that ships with "
            "ComfyUI (comfy/sd1_tokenizer) is used automatically")
    return folder


def load_clip_tokenizer(candidates, family: str, max_length: int = 77, *, what: str = "tokenizer"):
    """A ``transformers.CLIPTokenizer`` from the first usable folder in ``candidates``.

    SD2's OpenCLIP text tower was trained with "!" (id 0) as padding, SD1's with the end token;
    the tokenizer pads accordingly whatever its folder says.
    """
    folder = require_clip_tokenizer(candidates, what)
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    kwargs = {"model_max_length": max_length}
    if family == "sd2":
        kwargs["pad_token"] = "!"
    # transformers 4.x's CLIPTokenizer reads only vocab.json + merges.txt; the fast one reads tokenizer.json.
    bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    cls = CLIPTokenizer if bpe else CLIPTokenizerFast
    tok = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    if family == "sd1" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
