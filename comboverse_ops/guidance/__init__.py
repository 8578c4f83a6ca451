"""Score distillation guidance for the composition stage (METHOD.md, SSDS).

In: a posed :class:`~.types.scene.Scene` and the step number (``guidance(scene, step)``), a
loaded text-to-image SD model and a caption naming the objects' relation.
Out: ``{"loss_ssds": loss}``, a scalar differentiable w.r.t. every pose, for
:func:`~.compose.refine.refine_poses` to weight.

- :mod:`.ssds`: :class:`SSDSGuidance`: views sampled around the reference camera, rendered,
  encoded, and the SDS loss with spatially reweighted tokens.
- :mod:`.spatial_tokens`: caption -> token ids and per-token weights (the relation words up-weighted).
- :mod:`.attention`: the cross-attention processor that applies the token weights (diffusers'
  processor seam).
"""
