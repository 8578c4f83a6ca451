"""Stage 2, object crop -> object mesh (METHOD.md step 3): the built-in image-to-3D model (TripoSR).

In: ``images [B, H, W, 3]`` float RGB in [0, 1], one re-centred crop per object (Segment's or
Inpaint's), optional ``masks [B, H, W]``, and a loaded model (:mod:`.checkpoint`).
Out: ``list[Mesh]``, one per crop, in the canonical object frame (front +Z, up +Y, centred,
longest side 1; :mod:`..types.mesh`), decimated to the face budget, and the conditioning images.
Meshes from other 3D nodes come in through :mod:`..meshio.meshes_in` instead.

- :mod:`.reconstruct`: crops -> meshes (:func:`reconstruct_objects`), :class:`Lift3DSettings`.
- :mod:`.preprocess`: the conditioning image (foreground framed on grey).
- :mod:`.triposr`, :mod:`.vit`, :mod:`.config`, :mod:`.checkpoint`: the network, its config
  and the checkpoint loader; :mod:`.surface`: density grid -> marching cubes.

Submodules are imported where they are used, so importing this package stays cheap.
"""
