"""Spatial-token attention reweighting as a diffusers attention processor (SSDS, METHOD.md).

In the cross-attention layers of the UNet, the post-softmax attention probabilities ``P`` of
the chosen text-token columns are multiplied by ``c`` (prompt-to-prompt style reweighting):

    P'[:, j] = w_j * P[:, j],   w_j = c for spatial tokens, 1 otherwise,   out = P' V

Without renormalisation (the known re-implementation's choice, the default) this equals
``P (diag(w) V)``: scaling the *value rows* of those tokens by ``c``, so the processor calls
``scaled_dot_product_attention`` (flash / memory-efficient kernels) on rescaled values and never
materialises ``P``. With ``renormalize=True`` the rows of ``P'`` are divided by their sums, which
equals a softmax of the logits plus ``log w``: an additive attention bias, again through SDPA.
Both are exact; ``tests/test_attention.py`` checks them against an explicit computation.

Weights are per batch item (``[B, L]``), so the unconditional half of a classifier-free
guidance batch can keep ``w = 1``. They travel with each UNet call, diffusers' way:

    unet(x, t, encoder_hidden_states=emb, cross_attention_kwargs={"token_weights": w})

:func:`install_spatial_attention` puts the processor on every attention layer of the UNet, so
that every layer accepts ``token_weights`` (diffusers warns at each call about a keyword a
processor does not take); only the chosen cross-attention layers apply the weights, the others
(self-attention included) compute the stock attention.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

__all__ = [
    "SpatialTokenAttnProcessor",
    "cross_attention_names",
    "install_spatial_attention",
    "remove_spatial_attention",
]


class SpatialTokenAttnProcessor:
    """A cross-attention processor that multiplies the attention of chosen tokens (module doc).

    Args:
        active: apply ``token_weights`` (a chosen cross-attention layer); False: ignore them.
        renormalize: divide the reweighted probabilities by their row sums.

    Called with ``token_weights`` ``[B, L]`` (or ``[1, L]``) float factors, or None: without
    weights (or all ones), and in layers that are not active, it computes what diffusers'
    ``AttnProcessor2_0`` computes.
    """

    def __init__(self, active: bool = True, renormalize: bool = False):
        self.active, self.renormalize = active, renormalize

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 token_weights: torch.Tensor | None = None, *args, **kwargs):
        cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        w = token_weights if self.active and cross else None
        if w is not None:
            w = self._fit(w, batch_size, key.shape[2], value)
            if self.renormalize:
                bias = w.log()[:, None, None, :]  # softmax(s + log w) = P diag(w) / (P w)
                attention_mask = bias if attention_mask is None else attention_mask + bias
            else:
                value = value * w[:, None, :, None]  # P diag(w) V = P (diag(w) V)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _fit(w: torch.Tensor, batch: int, tokens: int, like: torch.Tensor) -> torch.Tensor:
        if w.ndim != 2 or w.shape[1] != tokens or w.shape[0] not in (1, batch):
            raise ValueError(f"token weights: expected [{batch}, {tokens}] or [1, {tokens}], got {tuple(w.shape)}")
        if w.shape[0] == 1:
            w = w.expand(batch, tokens)
        return w.to(device=like.device, dtype=like.dtype)


def cross_attention_names(unet, layer_filter: str = "attn2") -> list[str]:
    """Processor names (as in ``unet.attn_processors``) of cross-attention layers matching ``layer_filter``.

    ``layer_filter`` is a regular expression searched in the name, e.g. ``"attn2"`` (all
    cross-attention layers, the default), ``"mid_block.*attn2"`` or ``"up_blocks\\.[12].*attn2"``.
    Only layers that attend to the text (``attn2``) are ever chosen.
    """
    pattern = re.compile(layer_filter)
    return [name for name in unet.attn_processors if ".attn2." in name and pattern.search(name)]


def install_spatial_attention(unet, layer_filter: str = "attn2", renormalize: bool = False) -> list[str]:
    """Put :class:`SpatialTokenAttnProcessor` on ``unet``: active on the cross-attention layers
    matching ``layer_filter``, inactive (stock attention) on every other layer (module doc).

    Returns the names of the active layers. Keep ``unet.attn_processors`` first to put the
    previous processors back (:class:`.ssds.SSDSGuidance` does).

    Raises:
        ValueError: when no cross-attention layer matches ``layer_filter``.
    """
    names = cross_attention_names(unet, layer_filter)
    if not names:
        raise ValueError(f"layer filter: expected a pattern matching some cross-attention layers (e.g. 'attn2'), "
                         f"got {layer_filter!r}, which matches none")
    active, inactive = SpatialTokenAttnProcessor(True, renormalize), SpatialTokenAttnProcessor(False, renormalize)
    unet.set_attn_processor({name: (active if name in names else inactive) for name in unet.attn_processors})
    return names


def remove_spatial_attention(unet) -> None:
    """Give every layer with a :class:`SpatialTokenAttnProcessor` the stock ``AttnProcessor2_0`` back."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    current = unet.attn_processors
    if any(isinstance(p, SpatialTokenAttnProcessor) for p in current.values()):
        unet.set_attn_processor({n: (AttnProcessor2_0() if isinstance(p, SpatialTokenAttnProcessor) else p)
                                 for n, p in current.items()})

