"""Tiny models in the real file formats, for tests and `benchmarks/stage1.py --tiny`.

- SAM: ``segment_anything``'s modules with a tiny image encoder, saved as a ``.pth`` state dict.
- SD 1.x / 2.x (inpainting or text-to-image): tiny diffusers UNet / VAE / CLIP text encoder,
  written as one ``.safetensors`` in the original LDM / ComfyUI key layout (SD1: Hugging Face
  CLIP keys under ``cond_stage_model.transformer.``; SD2: OpenCLIP keys under
  ``cond_stage_model.model.``, with the extra last layer SD2 skips), plus a diffusers-format
  config folder describing the tiny architecture, and a tiny CLIP BPE tokenizer.

The diffusers -> original key conversion here is written from the two layouts' published
structure; it is the inverse of what the loaders under test do, so a round trip that gives the
same outputs checks both.
"""

from __future__ import annotations

import json
from pathlib import Path

import shutil

import torch

def node_class(pack, module: str, name: str):
    """A node class of the pack as ComfyUI imports it (``nodes/<module>.py``)."""
    from importlib import import_module

    return getattr(import_module(f"{pack.__name__}.nodes.{module}"), name)


SAM_TINY = dict(name="custom", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                encoder_global_attn_indexes=(1,), image_size=128, patch_size=16, window_size=4, prompt_embed_dim=32,
                mask_in_chans=8, decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=32)


def save_tiny_sam(path: Path, seed: int = 0) -> Path:
    from comboverse_ops.models.sam import SamArchitecture, build_sam

    torch.manual_seed(seed)
    sam = build_sam(SamArchitecture(**SAM_TINY))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------
# Tokenizer

_CHARS = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
_MERGES = ("t h", "th e</w>", "o f</w>", "r e", "re d</w>", "b o", "bo x</w>")


def write_tiny_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer (vocab.json + merges.txt) over ASCII; returns its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in _CHARS:
        vocab.setdefault(c, len(vocab))
    for c in _CHARS:
        vocab.setdefault(c + "</w>", len(vocab))
    for m in _MERGES:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    return len(vocab)


# ----------------------------------------------------------------------------------------------
# SD configs


def tiny_sd_configs(family: str, inpainting: bool, vocab_size: int, vae_levels: int = 2) -> dict[str, dict]:
    """Configs of a tiny SD; ``vae_levels`` 4 gives SD's own latent factor of 8 (cheap at 512 px)."""
    sd2 = family == "sd2"
    unet = {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu",
        "attention_head_dim": [2, 4] if sd2 else 8, "block_out_channels": [16, 32],
        "cross_attention_dim": 24, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "in_channels": 9 if inpainting else 4,
        "out_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16,
        "use_linear_projection": sd2, "flip_sin_to_cos": True, "freq_shift": 0,
    }
    vae = {
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [8, 16, 16, 16][:vae_levels],
        "down_block_types": ["DownEncoderBlock2D"] * vae_levels, "up_block_types": ["UpDecoderBlock2D"] * vae_levels,
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
        "sample_size": 32, "scaling_factor": 0.18215,
    }
    text = {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 24,
        "intermediate_size": 40, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
        "vocab_size": vocab_size, "hidden_act": "gelu" if sd2 else "quick_gelu", "projection_dim": 24,
        "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": 1,
    }
    sched = json.loads((Path(__file__).resolve().parents[1] / "comboverse_ops" / "configs" / "sd1" / "scheduler"
                        / "scheduler_config.json").read_text())
    index = {"_class_name": "StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"]}
    return {"model_index.json": index, "unet/config.json": unet, "vae/config.json": vae,
            "text_encoder/config.json": text, "scheduler/scheduler_config.json": sched}


def write_config_dir(folder: Path, configs: dict[str, dict]) -> Path:
    for rel, cfg in configs.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(cfg, indent=2))
    return folder


def build_sd_models(config_dir: Path, seed: int = 0, *, device="cpu", weight_scale: float | None = None):
    """Randomly initialised (seeded) diffusers UNet, VAE and CLIPTextModel from a config folder.

    By default every tensor is perturbed, so a weight loaded into the wrong place changes outputs
    (tests). ``weight_scale`` instead shrinks the matrices, which keeps full-size random models'
    activations finite in fp16 through many denoising steps (benchmarks). ``device``: where the
    modules are initialised (full-size models initialise in seconds on a GPU, minutes on a CPU).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir), subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():
                if weight_scale is None:
                    p.add_(torch.randn_like(p) * 0.05)
                elif p.ndim > 1:
                    p.mul_(weight_scale)
    return unet.eval(), vae.eval(), text.eval()


# ----------------------------------------------------------------------------------------------
# diffusers -> original (LDM) key layout


def _resnet_keys(src: str, dst: str, sd: dict, out: dict, vae: bool = False) -> None:
    names = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
             "conv_shortcut": "nin_shortcut"} if vae else \
        {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
         "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    for k, v in sd.items():
        if k.startswith(src + "."):
            head, _, tail = k[len(src) + 1:].partition(".")
            out[f"{dst}.{names[head]}.{tail}"] = v


def _copy_prefix(src: str, dst: str, sd: dict, out: dict) -> None:
    for k, v in sd.items():
        if k.startswith(src + "."):
            out[dst + k[len(src):]] = v


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    sd, cfg, out = unet.state_dict(), unet.config, {}
    L = cfg.layers_per_block
    pre = "model.diffusion_model."
    _copy_prefix("time_embedding.linear_1", pre + "time_embed.0", sd, out)
    _copy_prefix("time_embedding.linear_2", pre + "time_embed.2", sd, out)
    _copy_prefix("conv_in", pre + "input_blocks.0.0", sd, out)
    idx = 1
    n = len(cfg.block_out_channels)
    for i in range(n):
        for j in range(L):
            _resnet_keys(f"down_blocks.{i}.resnets.{j}", f"{pre}input_blocks.{idx}.0", sd, out)
            _copy_prefix(f"down_blocks.{i}.attentions.{j}", f"{pre}input_blocks.{idx}.1", sd, out)
            idx += 1
        if i < n - 1:
            _copy_prefix(f"down_blocks.{i}.downsamplers.0.conv", f"{pre}input_blocks.{idx}.0.op", sd, out)
            idx += 1
    _resnet_keys("mid_block.resnets.0", pre + "middle_block.0", sd, out)
    _copy_prefix("mid_block.attentions.0", pre + "middle_block.1", sd, out)
    _resnet_keys("mid_block.resnets.1", pre + "middle_block.2", sd, out)
    idx = 0
    for i in range(n):
        has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
        for j in range(L + 1):
            _resnet_keys(f"up_blocks.{i}.resnets.{j}", f"{pre}output_blocks.{idx}.0", sd, out)
            _copy_prefix(f"up_blocks.{i}.attentions.{j}", f"{pre}output_blocks.{idx}.1", sd, out)
            if j == L and i < n - 1:
                slot = 2 if has_attn else 1
                _copy_prefix(f"up_blocks.{i}.upsamplers.0.conv", f"{pre}output_blocks.{idx}.{slot}.conv", sd, out)
            idx += 1
    _copy_prefix("conv_norm_out", pre + "out.0", sd, out)
    _copy_prefix("conv_out", pre + "out.2", sd, out)
    assert len(out) == len(sd), (len(out), len(sd))
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    sd, cfg, out = vae.state_dict(), vae.config, {}
    pre = "first_stage_model."
    n = len(cfg.block_out_channels)
    L = cfg.layers_per_block
    for part in ("encoder", "decoder"):
        _copy_prefix(f"{part}.conv_in", f"{pre}{part}.conv_in", sd, out)
        _copy_prefix(f"{part}.conv_out", f"{pre}{part}.conv_out", sd, out)
        _copy_prefix(f"{part}.conv_norm_out", f"{pre}{part}.norm_out", sd, out)
        _resnet_keys(f"{part}.mid_block.resnets.0", f"{pre}{part}.mid.block_1", sd, out, vae=True)
        _resnet_keys(f"{part}.mid_block.resnets.1", f"{pre}{part}.mid.block_2", sd, out, vae=True)
        a = f"{part}.mid_block.attentions.0"
        for src, dst in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            for p in ("weight", "bias"):
                v = sd[f"{a}.{src}.{p}"]
                if p == "weight" and v.ndim == 2:
                    v = v[:, :, None, None]  # 1x1 convolutions in the original
                out[f"{pre}{part}.mid.attn_1.{dst}.{p}"] = v
    for i in range(n):
        for j in range(L):
            _resnet_keys(f"encoder.down_blocks.{i}.resnets.{j}", f"{pre}encoder.down.{i}.block.{j}", sd, out, vae=True)
        if i < n - 1:
            _copy_prefix(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"{pre}encoder.down.{i}.downsample.conv", sd,
                         out)
        k = n - 1 - i  # the original numbers decoder levels from the bottom
        for j in range(L + 1):
            _resnet_keys(f"decoder.up_blocks.{i}.resnets.{j}", f"{pre}decoder.up.{k}.block.{j}", sd, out, vae=True)
        if i < n - 1:
            _copy_prefix(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"{pre}decoder.up.{k}.upsample.conv", sd, out)
    _copy_prefix("quant_conv", pre + "quant_conv", sd, out)
    _copy_prefix("post_quant_conv", pre + "post_quant_conv", sd, out)
    assert len(out) == len(sd), (len(out), len(sd))
    return out


def _clip_items(text) -> dict[str, torch.Tensor]:
    """The text encoder's tensors with ``text_model.`` prefixes, whatever the transformers version."""
    sd = text.state_dict()
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()
            if not k.endswith("position_ids")}


def text_to_ldm(text, family: str, seed: int = 1) -> dict[str, torch.Tensor]:
    items = _clip_items(text)
    if family == "sd1":
        return {"cond_stage_model.transformer." + k: v for k, v in items.items()}
    pre, out = "cond_stage_model.model.", {}
    out[pre + "token_embedding.weight"] = items["text_model.embeddings.token_embedding.weight"]
    out[pre + "positional_embedding"] = items["text_model.embeddings.position_embedding.weight"]
    out[pre + "ln_final.weight"] = items["text_model.final_layer_norm.weight"]
    out[pre + "ln_final.bias"] = items["text_model.final_layer_norm.bias"]
    layers = text.config.num_hidden_layers
    d = text.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    for i in range(layers + 1):  # SD2 checkpoints carry one more layer than SD2 conditions on
        src, dst = f"text_model.encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        get = (lambda name, shape: items[src + name]) if i < layers else \
            (lambda name, shape: torch.randn(shape, generator=g))
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            w_shape = {"layer_norm1": (d,), "layer_norm2": (d,), "self_attn.out_proj": (d, d),
                       "mlp.fc1": (text.config.intermediate_size, d), "mlp.fc2": (d, text.config.intermediate_size)}[a]
            b_shape = (w_shape[0],)
            out[f"{dst}{b}.weight"] = get(f"{a}.weight", w_shape)
            out[f"{dst}{b}.bias"] = get(f"{a}.bias", b_shape)
        out[dst + "attn.in_proj_weight"] = torch.cat([get(f"self_attn.{p}_proj.weight", (d, d)) for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([get(f"self_attn.{p}_proj.bias", (d,)) for p in "qkv"])
    out[pre + "text_projection"] = torch.randn(d, d, generator=g)
    out[pre + "logit_scale"] = torch.tensor(4.6)
    return out


def save_tiny_sd(folder: Path, family: str = "sd2", inpainting: bool = True, seed: int = 0,
                 name: str | None = None, dtype=torch.float32, text_vocab_size: int | None = None,
                 vae_levels: int = 2):
    """Write a tiny SD checkpoint (single file, original layout), its config folder and tokenizer.

    ``text_vocab_size``: the text encoder's vocabulary, default the tiny tokenizer's. Inside
    ComfyUI the loaders use ComfyUI's own CLIP tokenizer first, whose ids need 49408.

    Returns ``(checkpoint_path, config_dir, tokenizer_dir, (unet, vae, text_encoder))``, the
    modules being the float32 originals.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "tokenizer"  # next to the checkpoint: one of the places the loader looks
    vocab = write_tiny_tokenizer(tok_dir)
    if text_vocab_size is not None:
        vocab = max(vocab, text_vocab_size)
    cfg_dir = write_config_dir(folder / f"config-{family}{'-inpainting' if inpainting else ''}",
                               tiny_sd_configs(family, inpainting, vocab, vae_levels))
    unet, vae, text = build_sd_models(cfg_dir, seed)
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_to_ldm(text, family)}
    path = folder / (name or f"tiny-{family}{'-inpainting' if inpainting else ''}.safetensors")
    save_file({k: v.detach().to(dtype).contiguous() for k, v in state.items()}, str(path))
    return path, cfg_dir, tok_dir, (unet, vae, text)


def save_tiny_sd_folder(folder: Path, resolution: int = 64, seed: int = 0) -> Path:
    """A tiny random SD-architecture text-to-image model as a diffusers folder (what the spatial
    prior of issue 12 ships as): ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/`` and ``model_index.json``, images of ``resolution`` pixels (latents of
    ``resolution / 4``: a 3-level VAE). Returns the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(folder / "tokenizer")
    configs = tiny_sd_configs("sd1", False, vocab)
    configs["vae/config.json"] = dict(configs["vae/config.json"], block_out_channels=[8, 8, 16],
                                      down_block_types=["DownEncoderBlock2D"] * 3,
                                      up_block_types=["UpDecoderBlock2D"] * 3, sample_size=resolution)
    configs["unet/config.json"] = dict(configs["unet/config.json"], sample_size=resolution // 4)
    write_config_dir(folder, configs)
    unet, vae, text = build_sd_models(folder, seed)
    unet.save_pretrained(str(folder / "unet"))
    vae.save_pretrained(str(folder / "vae"))
    text.save_pretrained(str(folder / "text_encoder"))
    return folder


def save_tiny_depth_anything(folder, preprocessor=True, kind="relative"):
    """A tiny Depth Anything (tiny Dinov2 backbone) saved with save_pretrained, as real ones ship."""

    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
    )

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14, depth_estimation_type=kind)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    # Random init gives a near-flat map; a larger head bias/weights make the output vary with the image.
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder)
    if preprocessor:  # as Depth-Anything-V2-Small-hf ships it, with a smaller size to keep the test fast
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 56, "width": 56},
            "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225]}))
    return folder


def save_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A tiny OWLv2 detector with its processor (image processor + CLIP tokenizer), saved with
    save_pretrained as the real owlv2-base-patch16-ensemble folder is; random weights."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    folder = Path(folder)
    vocab = write_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                  patch_size=16)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).eval()
    # Random box-head outputs swamp the per-patch box prior (a patch-sized box at the patch);
    # shrinking them keeps boxes near their patches, as a trained model's are. A smaller class
    # head keeps scores off 0 and 1, so thresholds mean something.
    with torch.no_grad():
        for p in [*model.box_head.parameters(), *model.class_head.parameters()]:
            p.mul_(0.01)
    model.save_pretrained(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# TripoSR and a picture that needs inpainting

TINY_TRIPOSR = Path(__file__).resolve().parent / "data" / "triposr_tiny"


TINY_TRIPOSR_LEVEL = 0.5  # the tiny model's random density peaks near 1: its surface is drawn at 0.5


def save_tiny_triposr(folder: Path, iso_level: float | None = None) -> Path:
    """The reduced TripoSR release of tests/data (``config.yaml``, ``model.ckpt`` and the DINO
    config it names) copied into ``folder`` (e.g. ``models/triposr``); returns the model.ckpt.

    ``iso_level``: move the density so that the surface the tests draw at ``TINY_TRIPOSR_LEVEL``
    lies at this level instead (TripoSR's 25 for a workflow at its shipped values): the density is
    ``exp(raw + density_bias)``, so the config's ``density_bias`` grows by ``ln(iso / 0.5)``.
    """
    import math

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(TINY_TRIPOSR / "dino-tiny", folder / "dino-tiny", dirs_exist_ok=True)
    config = (TINY_TRIPOSR / "config.yaml").read_text()
    if iso_level is not None:
        bias = -1.0 + math.log(iso_level / TINY_TRIPOSR_LEVEL)
        assert "density_activation: exp\n  density_bias: -1.0\n" in config
        config = config.replace("density_bias: -1.0", f"density_bias: {bias!r}")
    (folder / "config.yaml").write_text(config)
    return Path(shutil.copy(TINY_TRIPOSR / "model.ckpt", folder / "model.ckpt"))


def occluded_pair(size: int = 96):
    """A procedural scene of two objects, each partly hidden by the other (so Inpaint really runs
    SD), and its observation: ``(scene, observation)``."""
    from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene

    proc = make_procedural_scene(1, ProceduralSettings(min_objects=2, max_objects=2, image_size=size))
    return proc, proc.observe()

