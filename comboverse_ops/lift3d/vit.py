"""The DINO ViT that TripoSR uses as image tokenizer, written in plain torch.

Why not ``transformers.ViTModel``: TripoSR's checkpoint stores the ViT under the parameter
names of transformers 4.x (``encoder.layer.N.attention.attention.query`` ...), transformers 5
renamed them (``layers.N.attention.q_proj`` ...), and the two versions also interpolate the
position embeddings differently (see :meth:`ViTEmbeddings.positions`). A small module of our own
keeps the released names and the released numerics whatever transformers is installed (or none).

Parameter names below are exactly the official ones, relative to ``image_tokenizer.model``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig

__all__ = ["DinoViT"]


class ViTPatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size,
                                    stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)  # [B, N, D], row-major patches


class ViTEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n + 1, cfg.hidden_size))
        self.patch_embeddings = ViTPatchEmbeddings(cfg)
        self.patch_size = cfg.patch_size

    def positions(self, height: int, width: int) -> torch.Tensor:
        """``[1, 1 + h*w, D]`` position embeddings for an image of ``height x width`` pixels.

        The trained table covers a ``s x s`` patch grid; other grids get it resized bicubically.
        TripoSR pins transformers 4.35, which resizes by the scale factor ``(h + 0.1) / s`` (the
        DINO recipe) rather than to the exact size; sample positions differ slightly between the
        two, so the released model's numbers need the former, reproduced here (in float32).
        """
        table = self.position_embeddings
        n = table.shape[1] - 1
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == n and height == width:
            return table
        side = int(math.sqrt(n))
        grid = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic",
                             align_corners=False)
        if grid.shape[-2:] != (h, w):
            raise ValueError(f"ViT position embeddings: resizing the {side}x{side} table gave "
                             f"{tuple(grid.shape[-2:])}, expected ({h}, {w}) patches")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(table.dtype)
        return torch.cat([table[:, :1], grid], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1)
        return tokens + self.positions(height, width)


class ViTSelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.heads = cfg.num_attention_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return out.transpose(1, 2).reshape(b, n, d)


class ViTSelfOutput(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        return self.dense(x)


class ViTAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention = ViTSelfAttention(cfg)
        self.output = ViTSelfOutput(cfg)

    def forward(self, x):
        return self.output(self.attention(x))


class ViTDense(nn.Module):
    """One linear layer under the attribute name ``dense`` (the checkpoint's nesting)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.dense(x)


class ViTLayer(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with exact GELU."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention = ViTAttention(cfg)
        self.intermediate = ViTDense(cfg.hidden_size, cfg.intermediate_size)
        self.output = ViTDense(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))


class ViTEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x):
        for block in self.layer:
            x = block(x)
        return x


class DinoViT(nn.Module):
    """DINO ViT: ``[B, 3, H, W]`` normalised pixels -> ``[B, 1 + (H/p)(W/p), D]`` tokens (CLS first).

    ``pooler`` exists because the released checkpoint stores it; TripoSR never uses its output.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = ViTEmbeddings(cfg)
        self.encoder = ViTEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pooler = ViTDense(cfg.hidden_size, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixels)))
