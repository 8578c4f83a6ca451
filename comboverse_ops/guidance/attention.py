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
guidance batch can keep ``w = 1``. They are set on a shared :class:`TokenWeights` holder before
each UNet call; self-attention layers keep their stock processor.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = [
    "SpatialTokenAttnProcessor",
    "TokenWeights",
    "cross_attention_names",
    "install_spatial_attention",
    "remove_spatial_attention",
]


class TokenWeights:
    """The current per-token factors, shared by every installed processor.

    Attributes:
        weights: ``[B, L]`` (or ``[1, L]``, broadcast over the batch) float factors, or None (no
            reweighting: the stock computation).
        renormalize: divide the reweighted probabilities by their row sums.
    """

    def __init__(self, renormalize: bool = False):
        self.weights: torch.Tensor | None = None
        self.renormalize = renormalize

    @contextmanager
    def use(self, weights: torch.Tensor | None):
        """Reweight with ``weights`` (``[B, L]``) inside the block."""
        old, self.weights = self.weights, weights
        try:
            yield self
        finally:
            self.weights = old


class SpatialTokenAttnProcessor:
    """A cross-attention processor that multiplies the attention of chosen tokens (module doc).

    With no weights set (or all ones) it computes what diffusers' ``AttnProcessor2_0`` computes.
    """

    def __init__(self, state: TokenWeights):
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
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

        w = self.state.weights
        if w is not None:
            w = self._fit(w, batch_size, key.shape[2], value)
            if self.state.renormalize:
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


def install_spatial_attention(unet, state: TokenWeights, layer_filter: str = "attn2") -> list[str]:
    """Put a :class:`SpatialTokenAttnProcessor` on the matching cross-attention layers of ``unet``.

    Other layers keep their processors. Returns the names of the layers changed.

    Raises:
        ValueError: when no cross-attention layer matches ``layer_filter``.
    """
    names = cross_attention_names(unet, layer_filter)
    if not names:
        raise ValueError(f"layer filter: expected a pattern matching some cross-attention layers (e.g. 'attn2'), "
                         f"got {layer_filter!r}, which matches none")
    current = unet.attn_processors
    processor = SpatialTokenAttnProcessor(state)
    unet.set_attn_processor({name: (processor if name in names else p) for name, p in current.items()})
    return names


def remove_spatial_attention(unet) -> None:
    """Give every layer with a :class:`SpatialTokenAttnProcessor` the stock ``AttnProcessor2_0`` back."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    current = unet.attn_processors
    if any(isinstance(p, SpatialTokenAttnProcessor) for p in current.values()):
        unet.set_attn_processor({n: (AttnProcessor2_0() if isinstance(p, SpatialTokenAttnProcessor) else p)
                                 for n, p in current.items()})

