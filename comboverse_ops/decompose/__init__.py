"""Stage 1, picture -> objects (METHOD.md step 1-2): find, cut out and complete each object.

In: one picture ``image_hwc [H, W, C]`` float in [0, 1] and what the user says about its objects
(boxes in source pixels, points, phrases, or nothing).
Out: a :class:`~.types.layout.Layout` (boxes ``[N, 4]``, phrases, visible masks ``[N, H, W]``)
and one re-centred square crop per object for image-to-3D (``crops [N, S, S, 3]`` float RGB,
``crop_masks [N, S, S]``), plus, optionally, a depth map ``[H, W]`` for InitPose.

- :mod:`.detect`: phrases -> boxes (open-vocabulary detector, optional).
- :mod:`.segment`: boxes / points / nothing -> SAM masks -> :class:`Segmentation` (layout + crops).
- :mod:`.crops`: the crop windows and the re-centring, crop <-> source pixel transforms.
- :mod:`.inpaint`: occluded objects completed with an SD inpainting model -> :class:`InpaintResult`.
- :mod:`.depth`: monocular depth (Depth Anything) -> disparity ``[H, W]``.
"""
