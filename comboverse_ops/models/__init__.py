"""Model loading: the shared cache and the loaders for the formats users have.

In: a path to a weights file or folder (ComfyUI's model folders, or the CLI's ``--models``),
a device and a dtype.
Out: loaded, evaluation-mode models, cached by ``(file, dtype, device)`` so that two nodes
share one copy: SAM (:mod:`.sam`), Stable Diffusion text-to-image and inpainting from single
files or diffusers folders (:mod:`.sd`), and the rule which model runs in which dtype
(:mod:`.precision`). TripoSR's loader lives in :mod:`..lift3d.checkpoint`, the depth and
detector loaders in :mod:`..decompose`.
"""

from .cache import MODEL_CACHE, ModelCache, ModelKey

__all__ = ["MODEL_CACHE", "ModelCache", "ModelKey"]
