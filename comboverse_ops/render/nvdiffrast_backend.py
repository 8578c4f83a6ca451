"""nvdiffrast backend (CUDA only, optional).

nvdiffrast is not on PyPI and is licensed for non-commercial use (NVIDIA Source Code License);
the pack works without it through the torch backend. Images come out of nvdiffrast bottom row
first; they are flipped here so both backends return top-row-first images.
"""

from __future__ import annotations

import weakref

import torch

from .common import FlatScene, shade

__all__ = ["nvdiffrast_available", "rasterize_nvdiffrast"]

# One rasterizer context per CUDA device: creating one costs milliseconds and some memory.
_CONTEXTS: dict = {}


def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _context(device: torch.device):
    import nvdiffrast.torch as dr

    key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
    if key not in _CONTEXTS:
        _CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
    return _CONTEXTS[key]


# int32 triangles and antialiasing's topology hash, per faces tensor: flatten_scene hands the same
# tensor over for the same meshes, so a loop rendering them builds both once.
_TRIANGLES: dict[int, tuple] = {}


def _triangles(faces: torch.Tensor) -> tuple:
    import nvdiffrast.torch as dr

    hit = _TRIANGLES.get(id(faces))
    if hit is not None and hit[0]() is faces:
        return hit[1], hit[2]
    tri = faces.to(torch.int32).contiguous()
    topology = dr.antialias_construct_topology_hash(tri)
    _TRIANGLES[id(faces)] = (weakref.ref(faces), tri, topology)
    weakref.finalize(faces, _TRIANGLES.pop, id(faces), None)
    return tri, topology


def rasterize_nvdiffrast(flat: FlatScene, clip: torch.Tensor, width: int, height: int,
                         background: torch.Tensor, per_object: bool = False):
    """Same contract as :func:`.torch_raster.rasterize_torch`, on CUDA tensors."""
    import nvdiffrast.torch as dr

    if clip.device.type != "cuda":
        raise ValueError(f"nvdiffrast backend: tensors must be on a CUDA device, got {clip.device} "
                         "(use backend='torch' on CPU/MPS)")
    b = clip.shape[0]
    clip = clip.contiguous().float()
    tri, topology = _triangles(flat.faces)
    rast, _ = dr.rasterize(_context(clip.device), clip, tri, resolution=[height, width])
    attrs = torch.cat([flat.colors.float()[None].expand(b, -1, -1), flat.uvs.float()[None].expand(b, -1, -1),
                       clip[..., 3:4]], -1).contiguous()
    interp, _ = dr.interpolate(attrs, rast, tri)
    covered = rast[..., 3] > 0
    tri_id = (rast[..., 3].long() - 1).clamp_min(0)
    obj = torch.where(covered, flat.face_object[tri_id], torch.full_like(tri_id, -1))
    flat_obj = obj.reshape(-1).clamp_min(0)
    color = shade(flat, flat_obj, interp[..., 0:3].reshape(-1, 3), interp[..., 3:5].reshape(-1, 2))
    color = color.reshape(b, height, width, 3)
    mask = covered[..., None].float()
    channels = [color * mask + background.float() * (1 - mask), mask]
    n_obj = len(flat.textures)
    if per_object:  # one-hot object coverage, antialiased like the colour
        channels.append(torch.nn.functional.one_hot(obj.clamp_min(0), n_obj).float() * mask)
    rgba = dr.antialias(torch.cat(channels, -1).contiguous(), rast, clip, tri, topology_hash=topology)
    depth = torch.where(covered, interp[..., 5], torch.zeros_like(interp[..., 5]))
    flip = lambda t: torch.flip(t, dims=[1])  # noqa: E731
    object_alpha = flip(rgba[..., 4:]).permute(0, 3, 1, 2) if per_object else None
    return flip(rgba[..., :3]), flip(rgba[..., 3]), flip(depth), flip(obj), object_alpha
