"""Segment Anything (SAM) checkpoints: architecture from the weights, loading through the cache.

Official checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``)
are plain state dicts. The architecture is read from the tensors, never from the file name:
the image encoder's width and depth identify vit_b / vit_l / vit_h; any other SAM-style
checkpoint gets its dimensions inferred (patch size, image size, window size and which blocks
attend globally, from the relative-position tables; the decoder's width, depth and MLP size).
The networks are ``segment_anything``'s own modules (which import torchvision).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import MODEL_CACHE, ModelCache, ModelKey

__all__ = ["SamArchitecture", "SAM_ARCHITECTURES", "LoadedSam", "sam_architecture_from_state_dict", "build_sam",
           "load_sam", "require_segment_anything"]

log = logging.getLogger(__name__)

_WHERE = ("an official SAM checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth from "
          "facebookresearch/segment-anything) in ComfyUI's models/sams folder, loaded with 'ComboVerse Load SAM'")


@dataclass(frozen=True)
class SamArchitecture:
    """Dimensions of a SAM model (defaults: the official release's shared parts)."""

    name: str  # "vit_b", "vit_l", "vit_h", or "custom"
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024  # SAM's input side (images are resized so the longer side is this)
    patch_size: int = 16
    window_size: int = 14  # windowed-attention side in tokens
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256  # neck output = prompt/decoder width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8  # cannot be read from the weights; 8 in every SAM release
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


# ImageNet statistics in 0..255, as SAM normalises its input.
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)

# The three official image encoders (segment_anything.build_sam).
SAM_ARCHITECTURES = {
    "vit_b": SamArchitecture("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def _count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def sam_architecture_from_state_dict(state: dict[str, torch.Tensor], *,
                                     what: str = "SAM checkpoint") -> SamArchitecture:
    """The architecture of a SAM state dict (official ``image_encoder.* / prompt_encoder.* / mask_decoder.*`` keys).

    Raises:
        ValueError: the keys are not SAM's (SAM 2, HQ-SAM, MobileSAM's TinyViT, a transformers
            ``SamModel``, or not a SAM at all), naming what was found.
    """
    need = ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "mask_decoder.iou_token.weight",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    missing = [k for k in need if k not in state]
    if missing:
        hint = ""
        keys = list(state)
        if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention.")) for k in keys):
            hint = " It looks like a SAM 2 checkpoint, which is not supported."
        elif any(k.startswith("vision_encoder.") for k in keys):
            hint = " It looks like a transformers SamModel; use the original .pth release instead."
        elif any(k.startswith("image_encoder.layers.") for k in keys):
            hint = " It looks like MobileSAM (TinyViT encoder), which is not supported."
        raise ValueError(f"{what}: not a SAM (segment-anything) checkpoint: missing {missing[:2]}.{hint} "
                         f"Expected {_WHERE}")
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(state["image_encoder.pos_embed"].shape[1])
    depth = _count(state, r"^image_encoder\.blocks\.(\d+)\.")
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    global_idx, window = [], 0
    for i in range(depth):
        rows = int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0])
        if rows == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (rows + 1) // 2
    mlp_hidden = int(state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
    prompt_dim = int(state["mask_decoder.iou_token.weight"].shape[1])
    arch = SamArchitecture(
        name="custom", encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_idx), image_size=grid * patch_size, patch_size=patch_size,
        window_size=window, mlp_ratio=mlp_hidden / embed_dim, prompt_embed_dim=prompt_dim,
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=_count(state, r"^mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=_count(state, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
    )
    for name, official in SAM_ARCHITECTURES.items():
        if arch == SamArchitecture(**{**official.__dict__, "name": "custom"}):
            return official
    log.info("%s: not an official vit_b/l/h; inferred %s", what, arch)
    return arch


def require_segment_anything() -> None:
    """Import ``segment_anything``, or say what to install.

    segment-anything imports torchvision without declaring it, and the pack does not declare it
    either (no torchvision requirement keeps an installed torch: pip would replace torch to fit the
    newest torchvision). ComfyUI always has a matching pair; standalone installs may not.

    Raises:
        ImportError: torchvision or segment-anything missing, or a torchvision that does not fit
            the installed torch; the message names the command that fixes it.
    """
    try:
        import segment_anything  # noqa: F401
    except Exception as e:  # ImportError, or torchvision's RuntimeError for a torch it was not built for
        import importlib.util

        torch_version = torch.__version__.split("+")[0]
        major, minor = (int(x) for x in torch_version.split(".")[:2])
        vision = f"0.{minor + 15}.*" if major == 2 else "the matching release"
        if importlib.util.find_spec("segment_anything") is None:
            what, fix = "segment-anything is not installed", "pip install -r requirements.txt (or pip install .)"
        elif importlib.util.find_spec("torchvision") is None:
            what, fix = ("torchvision is not installed (segment-anything imports it)",
                         f"install the torchvision built for your torch {torch.__version__}: "
                         f"pip install \"torchvision=={vision}\" from the index your torch came from (PyTorch's "
                         "CPU index for a CPU build), or pip install \"comfyui-comboverse[sam]\" for the newest "
                         "torch and torchvision together")
        else:
            what, fix = (f"torchvision does not work with torch {torch.__version__} ({type(e).__name__}: "
                         f"{str(e)[:200]})", f"install the torchvision built for this torch (torchvision=={vision}) "
                         "from the index your torch came from")
        raise ImportError(f"SAM (ComboVerse Segment, comboverse run): {what}; {fix}") from e


def build_sam(arch: SamArchitecture, *, device=None):
    """A ``segment_anything.modeling.Sam`` of this architecture, randomly initialised, in eval mode."""
    from functools import partial

    require_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_size // arch.patch_size
    with torch.device(device or "cpu"):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=arch.image_size,
                mlp_ratio=arch.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=arch.encoder_num_heads, patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
                global_attn_indexes=arch.encoder_global_attn_indexes, window_size=arch.window_size,
                out_chans=arch.prompt_embed_dim),
            prompt_encoder=PromptEncoder(
                embed_dim=arch.prompt_embed_dim, image_embedding_size=(grid, grid),
                input_image_size=(arch.image_size, arch.image_size), mask_in_chans=arch.mask_in_chans),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=arch.num_multimask_outputs,
                transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                              mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_num_heads),
                transformer_dim=arch.prompt_embed_dim, iou_head_depth=arch.iou_head_depth,
                iou_head_hidden_dim=arch.iou_head_hidden_dim),
            pixel_mean=list(_PIXEL_MEAN),
            pixel_std=list(_PIXEL_STD),
        )
    if device is not None and torch.device(device).type != "meta":
        sam.to(device)  # Sam makes its normalisation buffers with torch.Tensor(), which ignores the device context
    return sam.eval()


@dataclass
class LoadedSam:
    """A SAM model ready to predict.

    Attributes:
        sam: ``segment_anything.modeling.Sam`` in eval mode, float32.
        arch: its :class:`SamArchitecture`.
        path: the checkpoint file.
    """

    sam: torch.nn.Module
    arch: SamArchitecture
    path: Path
    _modules: torch.nn.Module | None = field(default=None, repr=False)

    def modules(self) -> torch.nn.Module:
        """The network in a plain ``ModuleDict`` (one unit for a memory manager; ``Sam.device`` is read-only)."""
        if self._modules is None:
            self._modules = torch.nn.ModuleDict({"sam": self.sam})
        return self._modules

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    def to(self, device) -> "LoadedSam":
        self.sam.to(device)
        return self

    def predictor(self):
        """A fresh ``segment_anything.SamPredictor`` on this model."""
        from segment_anything import SamPredictor

        return SamPredictor(self.sam)


def load_sam(path: str | os.PathLike, *, device="cpu", cache: ModelCache | None = MODEL_CACHE) -> LoadedSam:
    """Load a SAM ``.pth`` (or ``.safetensors``) checkpoint, float32, through the shared cache.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a SAM checkpoint, or its tensors do not fit the detected architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint: no file at {path}; expected {_WHERE}")
    require_segment_anything()  # before reading a 2.6 GB file
    device = torch.device(device)

    def load():
        from .sd_checkpoint import read_checkpoint

        state = read_checkpoint(path, what=f"SAM checkpoint {path.name}")
        if "model" in state and not any(k.startswith("image_encoder.") for k in state):
            raise ValueError(f"SAM checkpoint {path.name}: a training checkpoint wrapper; expected {_WHERE}")
        arch = sam_architecture_from_state_dict(state, what=f"SAM checkpoint {path.name}")
        # Built on the meta device (no random init of ~600M parameters), then filled from the file.
        sam = build_sam(arch, device="meta").to_empty(device="cpu")
        # The normalisation constants are buffers that are not saved in checkpoints.
        sam.pixel_mean = torch.tensor(_PIXEL_MEAN).view(-1, 1, 1)
        sam.pixel_std = torch.tensor(_PIXEL_STD).view(-1, 1, 1)
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"SAM checkpoint {path.name}: the weights do not fit the detected {arch.name} "
                             f"architecture: {str(e)[:400]}") from None
        return LoadedSam(sam.float().eval().to(device), arch, path)

    if cache is None:
        return load()
    return cache.get(ModelKey.for_file("sam", path, torch.float32, device), load)
