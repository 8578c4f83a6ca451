"""Closed, vertex-coloured primitive meshes for synthetic scenes with known answers.

Every function returns a :class:`~comboverse_ops.types.mesh.Mesh` in the canonical object frame
(bounding box centred at the origin, longest side 1, +Y up, front +Z): a closed surface whose
triangles are counter-clockwise seen from outside (outward normals, positive signed volume).
Surfaces of revolution (cylinder, cone, sphere, capsule, torus) have Y as their axis and share
vertices along seams; the box has its own vertices per face so that faces can differ in colour
(it is closed geometrically, with coincident vertices along its edges).

Colours are not uniform: :func:`canonical_colors` modulates a base RGB colour by a smooth,
asymmetric function of the canonical position and a little baked shading, so a rotation of a
symmetric shape (a cylinder turning about its axis) changes its image. The renderer is unlit;
the baked shading only makes shapes readable.
"""

from __future__ import annotations

import math

import torch

from ..types.mesh import Mesh

__all__ = [
    "PRIMITIVE_KINDS",
    "canonical_colors",
    "box",
    "cylinder",
    "cone",
    "sphere",
    "capsule",
    "torus",
    "make_primitive",
]

PRIMITIVE_KINDS = ("box", "cylinder", "cone", "sphere", "torus", "capsule")

# Fixed light direction of the baked shading, in the canonical frame (above, front, right).
_LIGHT = (0.4, 0.8, 0.45)


def canonical_colors(points: torch.Tensor, base_color, normals: torch.Tensor | None = None,
                     shading: float = 0.2) -> torch.Tensor:
    """Vertex colours that depend on where a vertex sits in the canonical frame.

    ``color = base * (0.55 + 0.45 * g(p)) * (1 - shading * (1 - lambert(n)))`` where ``g`` is a
    sum of two plane waves in ``[0, 1]`` (smooth, with no rotational or mirror symmetry) and
    ``lambert(n) = 0.5 + 0.5 * n . light`` is a half-Lambert term for a fixed canonical light.

    Args:
        points: ``[N, 3]`` float canonical positions (roughly within ``[-0.5, 0.5]^3``).
        base_color: RGB triple in [0, 1].
        normals: ``[N, 3]`` float unit outward normals, or None for no shading.
        shading: strength of the baked shading in [0, 1]; 0 turns it off.
    Returns:
        ``[N, 3]`` float RGB in [0, 1], dtype and device of ``points``.
    """
    base = torch.as_tensor(base_color, dtype=points.dtype, device=points.device).reshape(-1)
    if base.numel() != 3 or bool((base < 0).any()) or bool((base > 1).any()):
        raise ValueError(f"canonical_colors: base_color must be an RGB triple in [0, 1], got {base.tolist()}")
    if not 0.0 <= shading <= 1.0:
        raise ValueError(f"canonical_colors: shading must be in [0, 1], got {shading}")
    x, y, z = points.unbind(-1)
    wave1 = torch.sin(2 * math.pi * (0.8 * x + 0.35 * y + 0.55 * z) + 0.9)
    wave2 = torch.sin(2 * math.pi * (-0.45 * x + 0.7 * y + 0.3 * z) + 2.1)
    g = 0.5 + 0.25 * wave1 + 0.25 * wave2
    brightness = 0.55 + 0.45 * g
    if normals is not None and shading > 0:
        light = torch.tensor(_LIGHT, dtype=points.dtype, device=points.device)
        lambert = 0.5 + 0.5 * (normals @ (light / light.norm()))
        brightness = brightness * (1 - shading * (1 - lambert))
    return (base * brightness[:, None]).clamp(0, 1)


def _finish(vertices: torch.Tensor, faces: torch.Tensor, color, shading: float, name: str,
            normals: torch.Tensor | None = None) -> Mesh:
    """Normalise into the canonical frame and colour by canonical position."""
    mesh = Mesh(vertices, faces, name=name).normalized()
    if normals is None:
        normals = mesh.vertex_normals()
    colors = canonical_colors(mesh.vertices, color, normals, shading)
    return Mesh(mesh.vertices, mesh.faces, vertex_colors=colors, name=name).validate()


def _check_count(fn: str, arg: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{fn}: {arg} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(fn: str, arg: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{fn}: {arg} must be a positive number, got {value!r}")
    return float(value)


def box(size=(1.0, 1.0, 1.0), color=(0.8, 0.8, 0.8), *, subdivisions: int = 1, shading: float = 0.2,
        device=None, dtype=torch.float32, name: str = "box") -> Mesh:
    """An axis-aligned box; each face is an ``n x n`` grid with its own vertices.

    Args:
        size: ``(width x, height y, depth z)`` proportions (> 0); the result is rescaled so
            the longest side is 1.
        color: base RGB in [0, 1] (see :func:`canonical_colors`).
        subdivisions: grid cells per face edge; ``12 * subdivisions**2`` triangles.
        shading: baked shading strength; with the fixed light every face gets its own shade.
    Returns:
        Mesh in the canonical frame with ``6 * (n + 1)**2`` vertices.
    """
    n = _check_count("box", "subdivisions", subdivisions, 1)
    sz = [_check_positive("box", f"size[{i}]", float(s)) for i, s in enumerate(size)]
    if len(sz) != 3:
        raise ValueError(f"box: size must have 3 values, got {len(sz)}")
    half = torch.tensor(sz, dtype=torch.float64) / 2
    t = torch.linspace(-1.0, 1.0, n + 1, dtype=torch.float64)
    gi, gj = torch.meshgrid(t, t, indexing="ij")
    gi, gj = gi.reshape(-1), gj.reshape(-1)
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    a = (ii * (n + 1) + jj).reshape(-1)
    b, c, d = a + (n + 1), a + (n + 1) + 1, a + 1  # (i+1, j), (i+1, j+1), (i, j+1)
    cell_tris = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    verts, faces, normals = [], [], []
    # Tangent axes (u, v) with e_u x e_v = +e_axis; swapped for the negative side.
    tangents = {0: (1, 2), 1: (2, 0), 2: (0, 1)}
    for axis in range(3):
        for sign in (1.0, -1.0):
            u, v = tangents[axis] if sign > 0 else tangents[axis][::-1]
            p = torch.zeros(gi.shape[0], 3, dtype=torch.float64)
            p[:, axis] = sign * half[axis]
            p[:, u] = gi * half[u]
            p[:, v] = gj * half[v]
            nrm = torch.zeros_like(p)
            nrm[:, axis] = sign
            faces.append(cell_tris + sum(x.shape[0] for x in verts))
            verts.append(p)
            normals.append(nrm)
    vertices = torch.cat(verts).to(device=device, dtype=dtype)
    return _finish(vertices, torch.cat(faces).to(device=device), color, shading, name,
                   normals=torch.cat(normals).to(device=device, dtype=dtype))


def _lathe(radii: list[float], heights: list[float], segments: int, closed: bool,
           device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface of revolution about +Y.

    The profile ``(radii[k], heights[k])`` runs from bottom to top along the outside (for a
    closed profile: counter-clockwise in the (radius, height) plane), so the quads
    ``(k, j) -> (k, j+1) -> (k+1, j+1)`` face outwards. A radius of exactly 0 at either end of
    an open profile is a pole: one vertex, and a fan of triangles around it. A point at angle
    ``phi`` sits at ``(r sin phi, y, r cos phi)`` (azimuth from +Z towards +X).
    """
    phi = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    rows, verts, count = [], [], 0
    for r, y in zip(radii, heights):
        if r == 0:
            verts.append(torch.tensor([[0.0, y, 0.0]], dtype=torch.float64))
            rows.append(torch.full((segments,), count, dtype=torch.int64))
            count += 1
        else:
            ring = torch.stack([r * torch.sin(phi), torch.full_like(phi, y), r * torch.cos(phi)], 1)
            verts.append(ring)
            rows.append(torch.arange(count, count + segments, dtype=torch.int64))
            count += segments
    idx = torch.stack(rows)  # [P, S]
    lower = idx if closed else idx[:-1]
    upper = torch.roll(idx, -1, 0) if closed else idx[1:]
    a, d = lower, upper
    b, c = torch.roll(lower, -1, 1), torch.roll(upper, -1, 1)
    tris = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    keep = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    return torch.cat(verts).to(device=device, dtype=dtype), tris[keep].to(device=device)


def cylinder(radius: float = 0.5, height: float = 1.0, color=(0.8, 0.8, 0.8), *, segments: int = 32,
             height_segments: int = 1, cap_rings: int = 1, shading: float = 0.2, device=None,
             dtype=torch.float32, name: str = "cylinder") -> Mesh:
    """An upright closed cylinder (axis +Y).

    Args:
        radius, height: proportions (> 0); rescaled so the longest side is 1.
        segments: vertices around the axis (>= 3).
        height_segments: rows along the side (>= 1); cap_rings: concentric rings per cap (>= 1).
    Returns:
        Mesh with ``2 * segments * (2 * cap_rings + height_segments - 1)`` triangles.
    """
    r, h = _check_positive("cylinder", "radius", radius), _check_positive("cylinder", "height", height)
    s = _check_count("cylinder", "segments", segments, 3)
    hs = _check_count("cylinder", "height_segments", height_segments, 1)
    c = _check_count("cylinder", "cap_rings", cap_rings, 1)
    cap = [r * k / c for k in range(1, c + 1)]
    radii = [0.0] + cap + [r] * (hs - 1) + cap[::-1] + [0.0]
    heights = ([-h / 2] * (c + 1) + [-h / 2 + h * m / hs for m in range(1, hs)] + [h / 2] * (c + 1))
    v, f = _lathe(radii, heights, s, False, device, dtype)
    return _finish(v, f, color, shading, name)


def cone(radius: float = 0.5, height: float = 1.0, color=(0.8, 0.8, 0.8), *, segments: int = 32,
         height_segments: int = 1, cap_rings: int = 1, shading: float = 0.2, device=None,
         dtype=torch.float32, name: str = "cone") -> Mesh:
    """An upright closed cone: base disc at the bottom, apex at the top.

    Returns:
        Mesh with ``2 * segments * (cap_rings + height_segments - 1)`` triangles.
    """
    r, h = _check_positive("cone", "radius", radius), _check_positive("cone", "height", height)
    s = _check_count("cone", "segments", segments, 3)
    hs = _check_count("cone", "height_segments", height_segments, 1)
    c = _check_count("cone", "cap_rings", cap_rings, 1)
    radii = [0.0] + [r * k / c for k in range(1, c + 1)] + [r * (1 - m / hs) for m in range(1, hs)] + [0.0]
    heights = [-h / 2] * (c + 1) + [-h / 2 + h * m / hs for m in range(1, hs)] + [h / 2]
    v, f = _lathe(radii, heights, s, False, device, dtype)
    return _finish(v, f, color, shading, name)


def sphere(color=(0.8, 0.8, 0.8), *, segments: int = 32, rings: int = 16, shading: float = 0.2, device=None,
           dtype=torch.float32, name: str = "sphere") -> Mesh:
    """A UV sphere with poles on the Y axis.

    Args:
        segments: vertices around the axis (>= 3); rings: latitude bands pole to pole (>= 2).
    Returns:
        Mesh with ``2 * segments * (rings - 1)`` triangles.
    """
    s = _check_count("sphere", "segments", segments, 3)
    n = _check_count("sphere", "rings", rings, 2)
    theta = [math.pi * k / n for k in range(n + 1)]  # from the bottom pole up
    radii = [0.0] + [math.sin(t) for t in theta[1:-1]] + [0.0]
    heights = [-math.cos(t) for t in theta]
    v, f = _lathe(radii, heights, s, False, device, dtype)
    return _finish(v, f, color, shading, name)


def capsule(radius: float = 0.25, length: float = 0.5, color=(0.8, 0.8, 0.8), *, segments: int = 32,
            rings: int = 8, length_segments: int = 1, shading: float = 0.2, device=None,
            dtype=torch.float32, name: str = "capsule") -> Mesh:
    """An upright capsule: a cylinder of ``length`` capped by two hemispheres of ``radius``.

    Args:
        rings: latitude bands per hemisphere (>= 1); length_segments: rows along the straight part.
    Returns:
        Mesh with ``2 * segments * (2 * rings + length_segments - 1)`` triangles.
    """
    r = _check_positive("capsule", "radius", radius)
    length = _check_positive("capsule", "length", length)
    s = _check_count("capsule", "segments", segments, 3)
    n = _check_count("capsule", "rings", rings, 1)
    ls = _check_count("capsule", "length_segments", length_segments, 1)
    alpha = [-math.pi / 2 + (math.pi / 2) * k / n for k in range(n + 1)]  # bottom pole to equator
    bottom_r = [0.0] + [r * math.cos(a) for a in alpha[1:]]
    bottom_y = [-length / 2 + r * math.sin(a) for a in alpha]
    side_y = [-length / 2 + length * m / ls for m in range(1, ls)]
    radii = bottom_r + [r] * (ls - 1) + bottom_r[::-1]
    heights = bottom_y + side_y + [-y for y in bottom_y[::-1]]
    v, f = _lathe(radii, heights, s, False, device, dtype)
    return _finish(v, f, color, shading, name)


def torus(major_radius: float = 0.35, minor_radius: float = 0.15, color=(0.8, 0.8, 0.8), *,
          segments: int = 48, minor_segments: int = 24, shading: float = 0.2, device=None,
          dtype=torch.float32, name: str = "torus") -> Mesh:
    """A torus lying flat (axis +Y), like a ring resting on the ground.

    Args:
        major_radius: distance from the axis to the tube centre; minor_radius: tube radius
            (0 < minor < major).
        segments: around the axis (>= 3); minor_segments: around the tube (>= 3).
    Returns:
        Mesh with ``2 * segments * minor_segments`` triangles.
    """
    big = _check_positive("torus", "major_radius", major_radius)
    small = _check_positive("torus", "minor_radius", minor_radius)
    if small >= big:
        raise ValueError(f"torus: minor_radius must be smaller than major_radius, got {small} >= {big}")
    s = _check_count("torus", "segments", segments, 3)
    m = _check_count("torus", "minor_segments", minor_segments, 3)
    theta = [2 * math.pi * k / m for k in range(m)]  # counter-clockwise in (radius, height)
    v, f = _lathe([big + small * math.cos(t) for t in theta], [small * math.sin(t) for t in theta], s, True,
                  device, dtype)
    return _finish(v, f, color, shading, name)


def make_primitive(kind: str, color=(0.8, 0.8, 0.8), *, target_faces: int = 1000, shading: float = 0.2,
                   device=None, dtype=torch.float32, name: str | None = None, **shape) -> Mesh:
    """A primitive of ``kind`` with subdivision counts chosen to give about ``target_faces``.

    Args:
        kind: one of :data:`PRIMITIVE_KINDS`.
        target_faces: wanted triangle count (>= 12); the result is within a few percent for
            budgets of a few hundred faces and more (small budgets round up to a minimal mesh).
        shape: proportions forwarded to the constructor (``size`` for a box; ``radius``,
            ``height`` for a cylinder or cone; ``radius``, ``length`` for a capsule;
            ``major_radius``, ``minor_radius`` for a torus).
    Returns:
        Mesh in the canonical frame named ``name`` (default ``kind``).
    """
    f = _check_count("make_primitive", "target_faces", target_faces, 12)
    common = dict(shading=shading, device=device, dtype=dtype, name=name or kind)
    if kind == "box":
        return box(color=color, subdivisions=max(1, round(math.sqrt(f / 12))), **shape, **common)
    if kind == "sphere":
        rings = max(2, round((1 + math.sqrt(1 + f)) / 2))  # segments = 2 * rings: 4 r (r - 1) faces
        return sphere(color=color, segments=2 * rings, rings=rings, **shape, **common)
    if kind == "torus":
        m = max(3, round(math.sqrt(f / 4)))
        return torus(color=color, segments=2 * m, minor_segments=m, **shape, **common)
    segments = max(8, round(math.sqrt(f)))
    k = max(1, round(f / (2 * segments)))  # profile spans, pole spans counted as halves
    if kind == "cylinder":
        c = max(1, round(k / 4))
        return cylinder(color=color, segments=segments, cap_rings=c, height_segments=max(1, k - 2 * c + 1),
                        **shape, **common)
    if kind == "cone":
        c = max(1, round(k / 3))
        return cone(color=color, segments=segments, cap_rings=c, height_segments=max(1, k - c + 1), **shape,
                    **common)
    if kind == "capsule":
        n = max(1, round(k / 3))
        return capsule(color=color, segments=segments, rings=n, length_segments=max(1, k - 2 * n + 1), **shape,
                       **common)
    raise ValueError(f"make_primitive: kind must be one of {PRIMITIVE_KINDS}, got {kind!r}")
