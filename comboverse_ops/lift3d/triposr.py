"""TripoSR (Tochilkin et al. 2024, MIT licence), reimplemented from its public description and code.

Forward pass, as released:

1. image tokenizer: the conditioning image (``[B, 3, S, S]`` in [0, 1], S = ``cond_image_size``)
   is normalised with the ImageNet mean/std and encoded by a DINO ViT into ``1 + (S/p)^2`` tokens;
2. triplane tokens: a learned ``[3, C, P, P]`` table, flattened to ``3 P^2`` tokens of width C;
3. backbone: GroupNorm, linear in, ``L`` blocks of (self-attention, cross-attention to the image
   tokens, GEGLU feed-forward), each pre-LayerNorm with a residual, linear out, plus a residual
   around the whole stack;
4. upsampler: a 2x2 stride-2 transposed convolution per plane -> the triplane ``[3, C', 2P, 2P]``;
5. NeRF decoder: a point ``x`` in ``[-radius, radius]^3`` samples plane 0 at ``(x, y)``, plane 1 at
   ``(x, z)``, plane 2 at ``(y, z)`` (bilinear, ``align_corners=False``, zeros outside), the three
   feature vectors are concatenated and an MLP gives 4 numbers: density ``exp(raw_0 - 1)``
   and colour ``sigmoid(raw_1..3)``.

Parameter names are the official ones (``image_tokenizer.model.*``, ``tokenizer.embeddings``,
``backbone.*``, ``post_processor.upsample.*``, ``decoder.layers.*``), so the released
``model.ckpt`` loads as it is (:mod:`.checkpoint`).

TripoSR's world frame (read off its camera code): the input view looks from +X towards the
origin, image right is +Y, image up is +Z; the object's front therefore faces +X and its top +Z.
:mod:`.frames` rotates that into the pack's canonical frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig, DecoderConfig, TripoSRConfig
from .vit import DinoViT

__all__ = ["TripoSR", "resize_for_tokenizer"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_for_tokenizer(images_bhwc: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, H, W, 3]`` float RGB in [0, 1] -> ``[B, 3, size, size]``, as TripoSR's preprocessor
    resizes (bilinear, antialiased, ``align_corners=False``; non-square inputs are stretched)."""
    x = images_bhwc.permute(0, 3, 1, 2)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    return F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)


class ImageTokenizer(nn.Module):
    def __init__(self, cfg: TripoSRConfig):
        super().__init__()
        self.model = DinoViT(cfg.vit)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` RGB in [0, 1] -> ``[B, 1 + N, D]`` image tokens."""
        mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return self.model((images - mean) / std)


class TriplaneTokens(nn.Module):
    def __init__(self, cfg: TripoSRConfig):
        super().__init__()
        t = cfg.tokenizer
        self.embeddings = nn.Parameter(torch.zeros(3, t.num_channels, t.plane_size, t.plane_size))

    def forward(self, batch_size: int) -> torch.Tensor:
        """``[B, C, 3 * P * P]`` tokens, plane-major then row-major."""
        e = self.embeddings
        return e.permute(1, 0, 2, 3).reshape(1, e.shape[1], -1).expand(batch_size, -1, -1)

    def to_planes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse layout: ``[B, C, 3 * P * P]`` -> ``[B, 3, C, P, P]``."""
        b, c, _ = tokens.shape
        p = self.embeddings.shape[-1]
        return tokens.reshape(b, c, 3, p, p).permute(0, 2, 1, 3, 4)


class Attention(nn.Module):
    """Multi-head attention with the diffusers-style names ``to_q/to_k/to_v/to_out.0``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, bias: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]

        def split(t):
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out[0](out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GatedGELU(nn.Module):
    """``proj`` then ``a * gelu(b)`` on its two halves (GEGLU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class ProjectedGELU(nn.Module):
    """``proj`` then a GELU: exact, tanh-approximated, or ``x * sigmoid(1.702 x)`` ("quick")."""

    def __init__(self, dim_in: int, dim_out: int, kind: str):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.kind = kind

    def forward(self, x):
        x = self.proj(x)
        if self.kind == "quick":
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x, approximate=self.kind)


class FeedForward(nn.Module):
    def __init__(self, dim: int, activation: str, mult: int = 4):
        super().__init__()
        inner = dim * mult
        act = {"geglu": lambda: GatedGELU(dim, inner),
               "gelu": lambda: ProjectedGELU(dim, inner, "none"),
               "gelu-approximate": lambda: ProjectedGELU(dim, inner, "tanh"),
               "geglu-approximate": lambda: ProjectedGELU(dim, inner, "quick")}[activation]()
        # Index 1 holds dropout in the released model; Identity keeps "net.2" for the output layer.
        self.net = nn.ModuleList([act, nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, cfg: BackboneConfig, dim: int):
        super().__init__()
        heads, head_dim, affine = cfg.num_attention_heads, cfg.attention_head_dim, cfg.norm_elementwise_affine
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.attn1 = Attention(dim, heads, head_dim, None, cfg.attention_bias)
        if cfg.cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=affine)
            self.attn2 = Attention(dim, heads, head_dim, cfg.cross_attention_dim, cfg.attention_bias)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.ff = FeedForward(dim, cfg.activation_fn)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """TripoSR's backbone (a 1D transformer over triplane tokens, cross-attending to the image)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        self.norm = nn.GroupNorm(cfg.norm_num_groups, cfg.in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(cfg.in_channels, inner)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(cfg, inner) for _ in range(cfg.num_layers))
        self.proj_out = nn.Linear(inner, cfg.in_channels)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[B, C, L]`` tokens, ``[B, N, D]`` image tokens -> ``[B, C, L]``."""
        x = self.proj_in(self.norm(tokens).transpose(1, 2))
        for block in self.transformer_blocks:
            x = block(x, context)
        return self.proj_out(x).transpose(1, 2) + tokens


class TriplaneUpsampler(nn.Module):
    def __init__(self, cfg: TripoSRConfig):
        super().__init__()
        p = cfg.post_processor
        self.upsample = nn.ConvTranspose2d(p.in_channels, p.out_channels, kernel_size=2, stride=2)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """``[B, 3, C, P, P]`` -> ``[B, 3, C', 2P, 2P]``."""
        b = planes.shape[0]
        out = self.upsample(planes.flatten(0, 1))
        return out.view(b, 3, *out.shape[1:])


class TriplaneDecoder(nn.Module):
    """The NeRF MLP: ``layers`` = Linear, act, (Linear, act) x (n_hidden_layers - 1), Linear(-> 4)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        act = {"relu": nn.ReLU, "silu": nn.SiLU}[cfg.activation]
        layers: list[nn.Module] = [nn.Linear(cfg.in_channels, cfg.n_neurons, bias=cfg.bias), act()]
        for _ in range(cfg.n_hidden_layers - 1):
            layers += [nn.Linear(cfg.n_neurons, cfg.n_neurons, bias=cfg.bias), act()]
        layers.append(nn.Linear(cfg.n_neurons, 4, bias=cfg.bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


_ACTIVATIONS = {
    "none": lambda x: x, "exp": torch.exp, "trunc_exp": torch.exp, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "softplus": F.softplus, "relu": F.relu,
}


class TripoSR(nn.Module):
    """TripoSR with the released parameter names; see the module doc for the forward pass.

    Use :meth:`encode` once per image, then :meth:`query` as often as needed.
    """

    def __init__(self, cfg: TripoSRConfig):
        super().__init__()
        self.cfg = cfg
        self.image_tokenizer = ImageTokenizer(cfg)
        self.tokenizer = TriplaneTokens(cfg)
        self.backbone = TriplaneTransformer(cfg.backbone)
        self.post_processor = TriplaneUpsampler(cfg)
        self.decoder = TriplaneDecoder(cfg.decoder)

    @property
    def image_size(self) -> int:
        """Side of the square conditioning image, pixels."""
        return self.cfg.cond_image_size

    @property
    def radius(self) -> float:
        """Half side of the cube ``[-radius, radius]^3`` that the triplane covers (TripoSR frame)."""
        return self.cfg.renderer.radius

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Triplanes ("scene codes") of conditioning images.

        Args:
            images: ``[B, 3, S, S]`` float RGB in [0, 1], S = :attr:`image_size` (object centred on
                a grey 0.5 background, as :mod:`.preprocess` makes it).
        Returns:
            ``[B, 3, C', 2P, 2P]`` triplanes in the model's dtype (plane order xy, xz, yz).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"TripoSR.encode: images must be [B, 3, S, S], got {tuple(images.shape)}")
        context = self.image_tokenizer(images)
        tokens = self.backbone(self.tokenizer(images.shape[0]), context)
        return self.post_processor(self.tokenizer.to_planes(tokens))

    def sample_features(self, triplane: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``[3, C', H, W]`` triplane, ``[N, 3]`` TripoSR-frame points -> ``[N, 3C']`` (or ``[N, C']``).

        Sampling runs in float32 whatever the model's dtype (the triplane is small; fp16 sample
        positions would be off by a few hundredths of a texel), the result has the triplane's dtype.
        """
        uv = points.float() / self.radius
        grid = torch.stack([uv[:, [0, 1]], uv[:, [0, 2]], uv[:, [1, 2]]])[:, None]  # [3, 1, N, 2]
        feats = F.grid_sample(triplane.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = feats[:, :, 0].to(triplane.dtype)  # [3, C', N]
        if self.cfg.renderer.feature_reduction == "mean":
            return feats.mean(0).transpose(0, 1)
        return feats.permute(2, 0, 1).reshape(points.shape[0], -1)

    def query(self, triplane: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Density and colour of one triplane at points of the TripoSR frame.

        Args:
            triplane: ``[3, C', H, W]`` one entry of :meth:`encode`.
            points: ``[N, 3]`` float positions (float32 recommended; any float dtype works); the
                triplane covers ``[-radius, radius]^3``.
        Returns:
            ``{"density": [N] float32 >= 0, "color": [N, 3] float32 in [0, 1]}`` (activations in
            float32 so an fp16 model cannot overflow ``exp``).
        """
        raw = self.decoder(self.sample_features(triplane, points)).float()
        r = self.cfg.renderer
        return {"density": _ACTIVATIONS[r.density_activation](raw[:, 0] + r.density_bias),
                "color": _ACTIVATIONS[r.color_activation](raw[:, 1:4])}
