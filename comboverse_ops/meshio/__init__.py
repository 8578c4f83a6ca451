"""Meshes and files in and out of the pack, and the mesh operations reading them needs.

In: mesh files (GLB / glTF / OBJ / PLY), ComfyUI core ``MESH`` values (``vertices [B, N, 3]``,
``faces [B, M, 3]``, optional colours, uvs, texture), bytes to write.
Out: canonical-frame :class:`~.types.mesh.Mesh` objects; GLB files (one node per scene object);
core ``MESH`` arrays; files that appear complete or not at all.

- :mod:`.glb`: :class:`~.types.scene.Scene` -> GLB bytes / file (one node per object, poses as TRS).
- :mod:`.core_mesh`: a scene -> core ``MESH`` arrays (merged, world space) and back.
- :mod:`.meshes_in`: core ``MESH`` values and mesh files -> canonical object meshes.
- :mod:`.decimate`, :mod:`.frames`: face budget, and a source's front / up axes -> the canonical frame.
- :mod:`.frame_preview`: a picture of how imported meshes sit in the canonical frame.
- :mod:`.atomic`: atomic writes; :mod:`.files`: cheap checks of weight files and output paths.
"""
