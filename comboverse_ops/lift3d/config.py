"""TripoSR's configuration: the official ``config.yaml`` schema as frozen dataclasses.

The released model comes as ``config.yaml`` + ``model.ckpt``. The YAML names one class per
component (``tsr.models....``) and a settings block for each; :func:`load_triposr_config` reads
that file with PyYAML (plain ``${a.b}`` references resolved as OmegaConf would), checks the
component classes are the ones this implementation reproduces, rejects unknown keys (as the
official structured config does) and checks that the blocks agree with each other.

The DINO ViT that TripoSR uses as image tokenizer is named by a Hugging Face id
(``facebook/dino-vitb16``); the official code downloads its ``config.json``. The pack ships that
file (``configs/triposr/dino-vitb16.json``), so nothing is downloaded. Any other value is read
as a folder (or ``.json`` file) relative to the ``config.yaml``.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

__all__ = ["ViTConfig", "TripoSRConfig", "load_triposr_config", "SHIPPED_CONFIG", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "triposr"
SHIPPED_CONFIG = CONFIG_DIR / "config.yaml"
_SHIPPED_VIT = {"facebook/dino-vitb16": CONFIG_DIR / "dino-vitb16.json"}

# The component classes of the official release, which this package reimplements.
OFFICIAL_CLASSES = {
    "image_tokenizer": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder": "tsr.models.network_utils.NeRFMLP",
    "renderer": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}


@dataclass(frozen=True)
class ViTConfig:
    """The DINO ViT architecture (keys of a Hugging Face ``ViTConfig``; defaults = ViT-B/16)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True


@dataclass(frozen=True)
class ImageTokenizerConfig:
    pretrained_model_name_or_path: str = "facebook/dino-vitb16"
    enable_gradient_checkpointing: bool = False  # training only; ignored


@dataclass(frozen=True)
class TriplaneTokenizerConfig:
    plane_size: int
    num_channels: int


@dataclass(frozen=True)
class BackboneConfig:
    """Transformer1D settings; defaults are the official dataclass defaults."""

    num_attention_heads: int = 16
    attention_head_dim: int = 88
    in_channels: int | None = None
    out_channels: int | None = None  # unused by the official model (it projects back to in_channels)
    num_layers: int = 1
    dropout: float = 0.0  # inference: no dropout
    norm_num_groups: int = 32
    cross_attention_dim: int | None = None
    attention_bias: bool = False
    activation_fn: str = "geglu"
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False  # the official (SDPA) attention path ignores it too
    norm_type: str = "layer_norm"
    norm_elementwise_affine: bool = True
    gradient_checkpointing: bool = False  # training only; ignored


@dataclass(frozen=True)
class PostProcessorConfig:
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class DecoderConfig:
    in_channels: int
    n_neurons: int
    n_hidden_layers: int
    activation: str = "relu"
    bias: bool = True
    weight_init: str | None = "kaiming_uniform"  # initialisation only; weights come from the checkpoint
    bias_init: str | None = None


@dataclass(frozen=True)
class RendererConfig:
    radius: float
    feature_reduction: str = "concat"
    density_activation: str = "trunc_exp"  # "trunc_exp" differs from "exp" only in its gradient
    density_bias: float = -1.0
    color_activation: str = "sigmoid"
    num_samples_per_ray: int = 128  # NeRF rendering only; the pack extracts meshes
    randomized: bool = False


@dataclass(frozen=True)
class TripoSRConfig:
    """A whole TripoSR model description.

    Attributes:
        cond_image_size: side in pixels of the square image the tokenizer sees (512 released).
        vit: the image tokenizer's ViT architecture (resolved from ``image_tokenizer``).
        source: the file this was read from (for error messages).
    """

    cond_image_size: int
    image_tokenizer: ImageTokenizerConfig
    vit: ViTConfig
    tokenizer: TriplaneTokenizerConfig
    backbone: BackboneConfig
    post_processor: PostProcessorConfig
    decoder: DecoderConfig
    renderer: RendererConfig
    source: str = "<memory>"


_ACTIVATIONS = ("none", "exp", "trunc_exp", "sigmoid", "tanh", "softplus", "relu")
_FF_ACTIVATIONS = ("geglu", "gelu", "gelu-approximate", "geglu-approximate")


def _resolve_references(node, root, where: str):
    """OmegaConf-style ``${a.b}`` references (whole values only) replaced by their targets."""
    if isinstance(node, dict):
        return {k: _resolve_references(v, root, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, str) and "${" in node:
        m = re.fullmatch(r"\$\{([A-Za-z0-9_.]+)\}", node.strip())
        if m is None:
            raise ValueError(f"{where}: only plain references like ${{tokenizer.num_channels}} are supported, "
                             f"got {node!r}")
        target = root
        for part in m.group(1).split("."):
            if not isinstance(target, dict) or part not in target:
                raise ValueError(f"{where}: reference {node!r} points to a key that does not exist")
            target = target[part]
        return _resolve_references(target, root, where)
    return node


def _build(cls, values, where: str):
    """``cls(**values)`` with unknown keys, missing keys and wrong types named in the error."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")
    out = {}
    for name, value in values.items():
        want = known[name].type
        if value is None and "None" in str(want):
            out[name] = None
        elif "bool" in str(want):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name}: expected true/false, got {value!r}")
            out[name] = value
        elif "int" in str(want):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}.{name}: expected an integer, got {value!r}")
            out[name] = value
        elif "float" in str(want):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}.{name}: expected a number, got {value!r}")
            out[name] = float(value)
        else:
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected a string, got {value!r}")
            out[name] = value
    return cls(**out)


def load_vit_config(name: str, base_dir: Path) -> ViTConfig:
    """The ViT architecture for ``image_tokenizer.pretrained_model_name_or_path``.

    ``facebook/dino-vitb16`` resolves to the shipped file; anything else must be a folder holding
    ``config.json`` (or a ``.json`` file), relative to ``base_dir`` unless absolute.
    """
    if name in _SHIPPED_VIT:
        path = _SHIPPED_VIT[name]
    else:
        path = Path(name) if Path(name).is_absolute() else base_dir / name
        if path.is_dir():
            path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"image_tokenizer.pretrained_model_name_or_path: {name!r} is neither a known id "
            f"({sorted(_SHIPPED_VIT)}) nor a ViT config.json at {str(path)!r}; nothing is downloaded, so "
            f"put the model's config.json there (or use the released config.yaml)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(ViTConfig)}
    if raw.get("model_type", "vit") != "vit":
        raise ValueError(f"{path}: expected a ViT config (model_type 'vit'), got model_type {raw.get('model_type')!r}")
    return _build(ViTConfig, {k: v for k, v in raw.items() if k in known}, str(path))


def _check_consistent(cfg: TripoSRConfig) -> None:
    where = cfg.source
    b, t, p, d, r = cfg.backbone, cfg.tokenizer, cfg.post_processor, cfg.decoder, cfg.renderer

    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(f"{where}: {message}")

    need(b.in_channels == t.num_channels,
         f"backbone.in_channels ({b.in_channels}) must equal tokenizer.num_channels ({t.num_channels})")
    need(b.norm_num_groups > 0 and t.num_channels % b.norm_num_groups == 0,
         f"backbone.norm_num_groups ({b.norm_num_groups}) must divide tokenizer.num_channels ({t.num_channels})")
    need(b.cross_attention_dim in (None, cfg.vit.hidden_size) or b.double_self_attention,
         f"backbone.cross_attention_dim ({b.cross_attention_dim}) must equal the ViT hidden_size "
         f"({cfg.vit.hidden_size}) that produces the image tokens")
    need(p.in_channels == t.num_channels,
         f"post_processor.in_channels ({p.in_channels}) must equal tokenizer.num_channels ({t.num_channels})")
    planes = 3 if r.feature_reduction == "concat" else 1
    need(d.in_channels == planes * p.out_channels,
         f"decoder.in_channels ({d.in_channels}) must be {planes} x post_processor.out_channels "
         f"({p.out_channels}) for feature_reduction {r.feature_reduction!r}")
    need(r.feature_reduction in ("concat", "mean"),
         f"renderer.feature_reduction must be 'concat' or 'mean', got {r.feature_reduction!r}")
    need(r.density_activation in _ACTIVATIONS and r.color_activation in _ACTIVATIONS,
         f"renderer activations must be among {_ACTIVATIONS}, got {r.density_activation!r} / {r.color_activation!r}")
    need(r.radius > 0, f"renderer.radius must be positive, got {r.radius}")
    need(d.activation in ("relu", "silu"), f"decoder.activation must be 'relu' or 'silu', got {d.activation!r}")
    need(d.n_hidden_layers >= 1, f"decoder.n_hidden_layers must be >= 1, got {d.n_hidden_layers}")
    need(b.activation_fn in _FF_ACTIVATIONS,
         f"backbone.activation_fn must be one of {_FF_ACTIVATIONS}, got {b.activation_fn!r}")
    need(b.norm_type == "layer_norm", f"backbone.norm_type must be 'layer_norm', got {b.norm_type!r}")
    need(not b.only_cross_attention and not b.double_self_attention,
         "backbone.only_cross_attention / double_self_attention are not used by TripoSR and not supported")
    need(cfg.vit.hidden_act == "gelu", f"the ViT hidden_act must be 'gelu', got {cfg.vit.hidden_act!r}")
    need(cfg.cond_image_size % cfg.vit.patch_size == 0,
         f"cond_image_size ({cfg.cond_image_size}) must be a multiple of the ViT patch_size ({cfg.vit.patch_size})")


def load_triposr_config(path: str | Path = SHIPPED_CONFIG) -> TripoSRConfig:
    """Read a TripoSR ``config.yaml`` (official schema) into a :class:`TripoSRConfig`.

    Raises:
        FileNotFoundError: no file at ``path``, or the ViT config it names is missing.
        ValueError: unknown or missing keys, component classes other than the official ones,
            or blocks that disagree (each message names the file and the key).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TripoSR config not found: {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable YAML ({str(e).splitlines()[0]}); expected TripoSR's config.yaml") \
            from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a YAML mapping (TripoSR's config.yaml), got {type(raw).__name__}")
    raw = _resolve_references(raw, raw, str(path))
    expected = {"cond_image_size"} | set(OFFICIAL_CLASSES) | {f"{k}_cls" for k in OFFICIAL_CLASSES}
    unknown, missing = sorted(set(raw) - expected), sorted(expected - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: not a TripoSR config.yaml: unknown keys {unknown}, missing keys {missing}")
    for part, cls_name in OFFICIAL_CLASSES.items():
        if raw[f"{part}_cls"] != cls_name:
            raise ValueError(f"{path}: {part}_cls is {raw[f'{part}_cls']!r}; this implementation reproduces "
                             f"{cls_name!r} only")
    tok = _build(ImageTokenizerConfig, raw["image_tokenizer"] or {}, f"{path}: image_tokenizer")
    cond = raw["cond_image_size"]
    if isinstance(cond, bool) or not isinstance(cond, int) or cond <= 0:
        raise ValueError(f"{path}: cond_image_size must be a positive integer, got {cond!r}")
    cfg = TripoSRConfig(
        cond_image_size=cond,
        image_tokenizer=tok,
        vit=load_vit_config(tok.pretrained_model_name_or_path, path.parent),
        tokenizer=_build(TriplaneTokenizerConfig, raw["tokenizer"], f"{path}: tokenizer"),
        backbone=_build(BackboneConfig, raw["backbone"], f"{path}: backbone"),
        post_processor=_build(PostProcessorConfig, raw["post_processor"], f"{path}: post_processor"),
        decoder=_build(DecoderConfig, raw["decoder"], f"{path}: decoder"),
        renderer=_build(RendererConfig, raw["renderer"], f"{path}: renderer"),
        source=str(path),
    )
    _check_consistent(cfg)
    return cfg
