"""Synthetic scenes with known answers, and the metrics that score a result against them.

Used by the tests, the benchmarks and the CLI's ``demo``; no user-facing stage depends on it.

In: a seed and :class:`~.synthetic.procedural.ProceduralSettings` (object count, kinds, layout).
Out: a :class:`~.synthetic.procedural.ProceduralScene`: the true :class:`~.types.scene.Scene`,
its rendered picture ``[H, W, 3]``, visible masks ``[N, H, W]`` and layout; scores
(pose errors, mask IoU, 3D box IoU, Chamfer / F-score) as plain floats.

- :mod:`.primitives`: box, cylinder, cone, sphere, capsule, torus meshes in the canonical frame.
- :mod:`.procedural`: random scenes of primitives (stacked, side by side, occluding), framed and
  rendered; :mod:`.placement` places the objects so that the stated relations hold.
- :mod:`.ambiguous`: scenes whose relation the picture alone does not decide (the SSDS ablation).
- :mod:`.metrics`: scene and surface metrics.
"""
