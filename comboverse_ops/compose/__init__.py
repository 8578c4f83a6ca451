"""Stage 3, objects -> scene (METHOD.md Stage 2): place every object mesh and refine the poses.

In: canonical object meshes (``list[Mesh]``, layout order), the picture's
:class:`~.types.layout.Layout`, the reference :class:`~.types.camera.Cameras`, optional depth
``[H, W]``, and the reference targets (picture ``[H, W, 3]``, alpha ``[H, W]``, visible masks
``[N, H, W]``).
Out: a :class:`~.types.scene.Scene` (one :class:`~.types.pose.Pose` per object) and the loss
history.

- :mod:`.init_pose`: boxes (+ depth) -> initial poses.
- :mod:`.refine`: the optimisation loop, ``state -> {loss terms}``; guidance plugs in from
  :mod:`..guidance`.
- :mod:`.physics`: penetration and support terms, interpenetration volume.
- :mod:`.relations`: whether a spatial relation ("left of", "on top of") holds in a scene.
"""
