"""The spatial prior's parts: Stable Diffusion's own classes at a small size, and its tokenizer.

A diffusers ``AutoencoderKL`` (64 px pictures to 16 x 16 x 4 latents), a
``UNet2DConditionModel`` with cross-attention, a transformers ``CLIPTextModel`` and a
``CLIPTokenizer`` whose BPE vocabulary holds every caption word as one token, and SD's noise
schedule (scaled-linear betas, 1000 steps) with v-prediction. :func:`save_pipeline` writes a
diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) that the pack's guidance loader reads unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .scenes import caption_words

__all__ = ["PriorConfig", "TINY", "build_tokenizer", "build_models", "scheduler_config", "save_pipeline"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class PriorConfig:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 2 downsamplings: 64 px -> 16 x 16 latents
    unet_channels: tuple[int, ...] = (64, 128, 128)  # ~6M parameters: the fp16 folder stays under 16 MiB
    unet_layers: int = 1
    heads: int = 4  # diffusers' SD1 naming: attention_head_dim = number of heads
    text_width: int = 192
    text_layers: int = 2
    text_heads: int = 3
    max_tokens: int = 32


TINY = PriorConfig(vae_channels=(8, 16, 16), unet_channels=(16, 32, 32), heads=2, text_width=32, text_layers=1,
                   text_heads=2)


def _learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Merges (in rank order) that turn every word of ``words`` into one symbol (Sennrich's BPE)."""
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    while any(len(s) > 1 for s in seqs.values()):
        pairs = Counter(p for s in seqs.values() for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    return merges


def build_tokenizer(folder: str | Path, max_tokens: int = 32):
    """Write a CLIP BPE tokenizer for the caption vocabulary into ``folder`` and load it.

    Every caption word becomes exactly one token (checked). Returns a ``transformers.CLIPTokenizer``.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = caption_words()
    merges = _learn_bpe(words)
    symbols = sorted({c for w in words for c in w} | {c + "</w>" for w in words for c in w})
    for a, b in merges:
        symbols.append(a + b)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(symbols))}
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": max_tokens, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=1))
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=max_tokens)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer: caption word {w!r} became {len(ids)} tokens {ids}")
    return tok


def scheduler_config() -> dict:
    """SD's noise schedule shifted for the small latent grid, v-prediction.

    SD's scaled-linear betas (0.00085 to 0.012) are tuned for 64 x 64 latents. At 16 x 16 the same
    noise level leaves far more of the layout readable (the signal of a low-resolution picture
    is averaged over fewer, larger pixels), so at SD's t in [0.8, 0.9] T the picture's own layout
    still shows through and guidance can hardly move it. Shifting the schedule so that the
    signal-to-noise ratio in that band is about (16 / 64)^2 = 1/16 of SD's (resolution-shifted
    schedules: Hoogeboom et al. 2023, "simple diffusion"; SD3's timestep shift) gives the band
    the role it has in SD: beta_end 0.023 (SNR at t = 0.85 T: 0.0016 against SD's 0.024).
    v-prediction: the model predicts the clean picture at high noise, where SSDS works.
    """
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.023,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}


def build_models(cfg: PriorConfig, vocab_size: int, bos_id: int, eos_id: int):
    """``(vae, unet, text_encoder)`` freshly initialised."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(cfg.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_channels,
                        layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=cfg.image_size)
    factor = 2 ** (n - 1)
    m = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size // factor, in_channels=4, out_channels=4, layers_per_block=cfg.unet_layers,
        block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.heads, norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens, hidden_act="quick_gelu", bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, projection_dim=cfg.text_width))
    return vae, unet, text


def save_pipeline(folder: str | Path, vae, unet, text_encoder, tokenizer_dir: str | Path, cfg: PriorConfig,
                  *, dtype=torch.float16, meta: dict | None = None) -> Path:
    """Write a diffusers Stable Diffusion folder the pack loads (module doc); weights in ``dtype``."""
    import copy
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        copy.deepcopy(module).to("cpu", dtype).save_pretrained(str(folder / name), safe_serialization=True)
    tok_out = folder / "tokenizer"
    tok_out.mkdir(exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, tok_out / f.name)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=1))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    (folder / "prior_config.json").write_text(json.dumps({"config": asdict(cfg), **(meta or {})}, indent=1))
    return folder
