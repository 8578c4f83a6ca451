"""Captioned scenes of coloured primitives for training the spatial prior, rendered in batches.

Every sample is two (sometimes three) primitives on the ground with one stated relation per
pair, seen by a camera drawn like SSDS's novel views (above the ground, looking at the group).
Captions are *viewer-relative*, as a real text-to-image model's are: "A to the left of B" means
A is left of B in this picture, "A in front of B" that A is nearer this camera, "A on top of B"
that A rests on B's top, "A under B" the reverse. The camera sits on the +Z side of the group
(azimuth within ``azimuth_deg`` of +Z), so world +X is the picture's right and world +Z its
front: relations are placed along those axes and hold in the picture by construction.

Rendering uses the pack's own rasterizers (:mod:`comboverse_ops.render`: nvdiffrast on CUDA,
the torch rasterizer elsewhere) on one instanced triangle set: every object slot holds one copy
of each primitive kind, and the kinds a sample does not use are collapsed to a point (zero-area
triangles cover no pixel). Colours are the primitives' baked canonical colours
(:func:`comboverse_ops.synthetic.primitives.canonical_colors`, the look of the pack's procedural scenes),
tinted per sample. All randomness comes from one ``torch.Generator``: the same seed gives the
same batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from comboverse_ops.types.camera import Cameras, orbit_camera
from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.compose.relations import RELATIONS  # the prior's relations: the ones the checker and benchmark judge
from comboverse_ops.render.common import FlatScene, face_neighbours
from comboverse_ops.render.nvdiffrast_backend import nvdiffrast_available, rasterize_nvdiffrast
from comboverse_ops.render.torch_raster import rasterize_torch

__all__ = ["RELATIONS", "OPPOSITE", "COLORS", "KINDS", "SHAPE_WORDS", "HELD_OUT", "SceneSpec", "SceneSampler",
           "caption_words"]

OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "in front of": "behind",
            "behind": "in front of", "on top of": "under", "under": "on top of"}
# Hue-distinct colours of procedural.COLOR_PALETTE (same RGB), so a colour checker can tell them apart.
COLORS = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.2, 0.7, 0.25),
    "blue": (0.2, 0.35, 0.9),
    "yellow": (0.95, 0.8, 0.1),
    "purple": (0.55, 0.25, 0.75),
    "cyan": (0.1, 0.75, 0.8),
}
KINDS = ("box", "sphere", "cylinder", "cone")  # primitives.PRIMITIVE_KINDS names
SHAPE_WORDS = {"box": "cube", "sphere": "sphere", "cylinder": "cylinder", "cone": "cone"}
FLAT_TOPPED = ("box", "cylinder")  # can carry another object
# (colour, kind, relation) of a subject never drawn for training: evaluation captions.
HELD_OUT = (
    ("red", "box", "to the left of"), ("blue", "sphere", "behind"), ("green", "cylinder", "on top of"),
    ("yellow", "cone", "in front of"), ("purple", "box", "to the right of"), ("cyan", "cylinder", "under"),
    ("red", "sphere", "in front of"), ("blue", "cone", "to the left of"),
)
_AXIS = {"to the left of": (0, -1.0), "to the right of": (0, 1.0), "in front of": (2, 1.0), "behind": (2, -1.0)}


def caption_words() -> list[str]:
    """Every word a caption can contain (the prior's vocabulary), in a fixed order."""
    words = ["a", "an", "the", ","]
    words += list(COLORS) + [SHAPE_WORDS[k] for k in KINDS]
    for r in RELATIONS:
        words += r.split()
    return list(dict.fromkeys(words))


@dataclass
class SceneSpec:
    """One drawn sample: per object slot its colour, kind and pose; relations; caption.

    ``relations`` are ``(subject_slot, relation, object_slot)``; slots of absent objects have
    ``kind is None``.
    """

    colors: list[str | None]
    kinds: list[str | None]
    relations: list[tuple[int, str, int]]
    caption: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(colors, kinds, relations) -> str:
    """"a red cube to the left of a blue sphere, a green cone behind the blue sphere"."""
    said: set[int] = set()

    def np_(k: int) -> str:
        noun = f"{colors[k]} {SHAPE_WORDS[kinds[k]]}"
        first = k not in said
        said.add(k)
        return f"{_article(noun)} {noun}" if first else f"the {noun}"

    return " , ".join(f"{np_(i)} {r} {np_(j)}" for i, r, j in relations).replace(" , ", ", ")


@dataclass(frozen=True)
class SamplerSettings:
    """How training pictures are drawn (ranges are procedural.py's where it has them)."""

    image_size: int = 64
    fov_deg: float = 40.0
    elevation_deg: tuple[float, float] = (-55.0, -10.0)  # kiui: negative = camera above; SSDS's novel views
    azimuth_deg: tuple[float, float] = (-20.0, 20.0)  # about +Z: keeps +X right and +Z front in the picture
    size: tuple[float, float] = (0.35, 0.7)  # longest side of an object, world units
    gap: tuple[float, float] = (0.03, 0.25)  # free space between related objects
    yaw_deg: tuple[float, float] = (-60.0, 60.0)
    third_object: float = 0.3  # probability of a third object related to the second
    zoom: tuple[float, float] = (1.0, 1.3)  # camera distance over the tightest framing
    faces_per_kind: int = 400
    held_out: tuple = HELD_OUT
    kinds: tuple = KINDS
    colors: tuple = tuple(COLORS)
    relations: tuple = RELATIONS


class SceneSampler:
    """Draws captioned samples and renders them (module doc).

    Args:
        settings: :class:`SamplerSettings`.
        device: where meshes live and pictures are rendered.
        split: ``"train"`` never draws a held-out (colour, kind, relation) subject;
            ``"heldout"`` draws only pairs whose first relation is held out.
    """

    SLOTS = 3

    def __init__(self, settings: SamplerSettings | None = None, device="cpu", split: str = "train"):
        if split not in ("train", "heldout", "any"):
            raise ValueError(f"split: expected 'train', 'heldout' or 'any', got {split!r}")
        self.s = settings or SamplerSettings()
        self.device = torch.device(device)
        self.split = split
        self.flat = None  # meshes are built on the first render (layout-only workers never build them)

    def _build_meshes(self):
        meshes = [make_primitive(k, (1.0, 1.0, 1.0), target_faces=self.s.faces_per_kind, shading=0.2,
                                 **_unit_shape(k)) for k in self.s.kinds]
        verts, faces, grey, kind_of_vertex, off = [], [], [], [], 0
        for ki, m in enumerate(meshes):
            verts.append(m.vertices)
            faces.append(m.faces.long() + off)
            grey.append(m.vertex_colors)
            kind_of_vertex.append(torch.full((m.num_vertices,), ki))
            off += m.num_vertices
        one_v, one_f = torch.cat(verts), torch.cat(faces)
        nv, nf = one_v.shape[0], one_f.shape[0]
        self.kind_of_vertex = torch.cat(kind_of_vertex).to(self.device)  # [Vs]
        self.canon = one_v.to(self.device)  # [Vs, 3] canonical, within [-0.5, 0.5]^3
        faces_all = torch.cat([one_f + k * nv for k in range(self.SLOTS)])
        grey_all = torch.cat([torch.cat(grey)] * self.SLOTS)
        # One "object" per (slot, kind): per-object coverage then tells slot and kind apart.
        face_kind = torch.cat([torch.full((m.num_faces,), ki) for ki, m in enumerate(meshes)])
        face_obj = torch.cat([face_kind + k * len(meshes) for k in range(self.SLOTS)])
        # Neighbours only serve the torch rasterizer's silhouette edges; computed on the canonical copy.
        nb = face_neighbours(one_v, one_f)
        nbs = torch.cat([torch.where(nb >= 0, nb + k * nf, nb) for k in range(self.SLOTS)])
        n_obj = self.SLOTS * len(meshes)
        self.flat = FlatScene(torch.zeros(nv * self.SLOTS, 3), faces_all, face_obj, grey_all,
                              torch.zeros(nv * self.SLOTS, 2), (None,) * n_obj, nbs)
        self.flat = FlatScene(*(t.to(self.device) if torch.is_tensor(t) else t for t in self.flat.__dict__.values()))
        self.n_kinds = len(meshes)

    # ------------------------------------------------------------------------------------------
    # Layout (CPU, Python: a few microseconds a sample)

    def _draw(self, g: random.Random) -> tuple[SceneSpec, list]:
        s = self.s
        u = lambda lo_hi: g.uniform(*lo_hi)  # noqa: E731
        pick = g.choice
        for _ in range(100):
            rel = pick(s.relations)
            cols = g.sample(s.colors, 3)
            kinds = [pick(s.kinds) for _ in range(3)]
            if rel == "on top of" and kinds[1] not in FLAT_TOPPED:
                kinds[1] = pick(FLAT_TOPPED)
            if rel == "under" and kinds[0] not in FLAT_TOPPED:
                kinds[0] = pick(FLAT_TOPPED)
            held = (cols[0], kinds[0], rel) in s.held_out
            if self.split == "train" and held or self.split == "heldout" and not held:
                continue
            break
        else:
            raise RuntimeError("SceneSampler: no sample found for this split (check held_out)")
        objs = []
        for k in range(3):
            dims = _proportions(kinds[k], u)
            size = u(s.size)
            objs.append({"dims": [d * size for d in dims], "yaw": math.radians(u(s.yaw_deg))})
        # A relation "on top of" / "under": the carried object is no wider than the carrier.
        carried, carrier = {"on top of": (0, 1), "under": (1, 0)}.get(rel, (None, None))
        if carried is not None:
            ratio = min(1.0, 0.9 * max(objs[carrier]["dims"][0], objs[carrier]["dims"][2])
                        / max(objs[carried]["dims"][0], objs[carried]["dims"][2]))
            objs[carried]["dims"] = [d * ratio for d in objs[carried]["dims"]]
        for o in objs:
            ex, ey, ez = o["dims"]
            c, sn = abs(math.cos(o["yaw"])), abs(math.sin(o["yaw"]))
            o["ext"] = (ex * c + ez * sn, ey, ex * sn + ez * c)  # world AABB extents after the yaw
        pos = [[0.0, 0.0, 0.0] for _ in range(3)]
        pos[1] = [0.0, objs[1]["ext"][1] / 2, 0.0]
        if carried is not None:
            base = objs[carrier]
            top = objs[carried]
            pos[carrier] = [0.0, base["ext"][1] / 2, 0.0]
            j = 0.25
            pos[carried] = [u((-j, j)) * base["ext"][0] / 2, base["ext"][1] + top["ext"][1] / 2,
                            u((-j, j)) * base["ext"][2] / 2]
        else:
            axis, sign = _AXIS[rel]
            d = objs[1]["ext"][axis] / 2 + objs[0]["ext"][axis] / 2 + u(s.gap)
            p = [0.0, objs[0]["ext"][1] / 2, 0.0]
            p[axis] = sign * d
            p[2 - axis] = u((-0.2, 0.2)) * d  # the other ground axis: small, so the relation dominates
            pos[0] = p
        relations = [(0, rel, 1)]
        used = [0, 1]
        if g.random() < s.third_object:
            # The third object beside the second, along the ground axis the first relation does not use.
            axis = 2 if rel in ("to the left of", "to the right of") else 0
            choices = [r for r, (a, _) in _AXIS.items() if a == axis]
            rel3 = pick(choices)
            held3 = (cols[2], kinds[2], rel3) in s.held_out
            if not (self.split == "train" and held3):
                _, sign = _AXIS[rel3]
                lo1 = [pos[1][a] - objs[1]["ext"][a] / 2 for a in range(3)]
                hi1 = [pos[1][a] + objs[1]["ext"][a] / 2 for a in range(3)]
                if carried is not None:  # the stack's footprint is the carrier's
                    lo1 = [pos[carrier][a] - objs[carrier]["ext"][a] / 2 for a in range(3)]
                    hi1 = [pos[carrier][a] + objs[carrier]["ext"][a] / 2 for a in range(3)]
                edge = hi1[axis] if sign > 0 else lo1[axis]
                p = [0.0, objs[2]["ext"][1] / 2, 0.0]
                p[axis] = edge + sign * (objs[2]["ext"][axis] / 2 + u(s.gap))
                p[2 - axis] = (lo1[2 - axis] + hi1[2 - axis]) / 2
                if not _overlaps(p, objs[2]["ext"], pos[0], objs[0]["ext"], margin=0.03):
                    pos[2] = p
                    relations.append((2, rel3, 1))
                    used.append(2)
        colors = [cols[k] if k in used else None for k in range(3)]
        kinds_used = [kinds[k] if k in used else None for k in range(3)]
        caption = make_caption(colors, kinds_used, relations)
        return SceneSpec(colors, kinds_used, relations, caption), [(objs[k], pos[k]) for k in range(3)]

    # ------------------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator, *, opposite: bool = False):
        """Draw ``n`` samples and render them.

        Args:
            n: batch size.
            generator: CPU ``torch.Generator`` (all randomness).
            opposite: render the *opposite* of each caption's first relation (the caption is
                kept): pictures that contradict their caption, for the SDS diagnostic.
        Returns:
            ``(images [n, S, S, 3] float in [0, 1], captions list[str], specs list[SceneSpec])``.
        """
        specs, layouts = [], []
        rng = random.Random(int(torch.randint(2 ** 62, (), generator=generator)))
        for _ in range(n):
            spec, lay = self._draw(rng)
            if opposite:
                spec, lay = self._flip_first(spec, lay)
            specs.append(spec)
            layouts.append(lay)
        s = self.s
        el = torch.empty(n).uniform_(*s.elevation_deg, generator=generator)
        az = torch.empty(n).uniform_(*s.azimuth_deg, generator=generator)
        zoom = torch.empty(n).uniform_(*s.zoom, generator=generator)
        images = self.render(specs, layouts, el, az, zoom)
        return images, [sp.caption for sp in specs], specs

    def _flip_first(self, spec: SceneSpec, lay):
        """Swap the first pair's places so the picture shows the opposite relation; the caption stays."""
        i, rel, j = spec.relations[0]
        (oi, pi), (_, pj) = lay[i], lay[j]
        lay = list(lay)
        if rel in ("on top of", "under"):
            # The opposite of "A on B" is "B on A": the stack is rebuilt the other way round
            # (sizes kept, so the new top may overhang). A third object is dropped.
            top, bottom = (i, j) if rel == "on top of" else (j, i)
            (ot, _), (ob, pb) = lay[top], lay[bottom]
            lay[top] = (ot, [pb[0], ot["ext"][1] / 2, pb[2]])
            lay[bottom] = (ob, [pb[0], ot["ext"][1] + ob["ext"][1] / 2, pb[2]])
            if spec.kinds[2] is not None:
                spec = _first_pair_only(spec)
            return spec, lay
        # Horizontal relations: mirror the subject about the object along the relation's axis.
        axis, _ = _AXIS[rel]
        p = list(pi)
        p[axis] = 2 * pj[axis] - pi[axis]
        lay[i] = (oi, p)
        if spec.kinds[2] is not None and _overlaps(p, oi["ext"], lay[2][1], lay[2][0]["ext"], margin=0.0):
            spec = _first_pair_only(spec)
        return spec, lay

    def draw(self, n: int, seed: int):
        """``(specs, layouts)`` of ``n`` samples from ``seed``, without rendering (for worker processes)."""
        rng = random.Random(seed)
        return tuple(zip(*[self._draw(rng) for _ in range(n)]))

    def render(self, specs, layouts, el, az, zoom) -> torch.Tensor:
        """``[n, S, S, 3]`` pictures of the given layouts, white background."""
        if self.flat is None:
            self._build_meshes()
        n, S, dev = len(specs), self.s.image_size, self.device
        K = self.n_kinds
        dims, yaw, pos, kind_idx, color = [], [], [], [], []
        for spec, lay in zip(specs, layouts):
            for k, (o, p) in enumerate(lay):
                present = spec.kinds[k] is not None
                dims.append(o["dims"] if present else [0.0, 0.0, 0.0])
                yaw.append(o["yaw"] if present else 0.0)
                pos.append(p if present else [0.0, 0.0, 0.0])
                kind_idx.append(self.s.kinds.index(spec.kinds[k]) if present else -1)
                color.append(COLORS[spec.colors[k]] if present else (0.0, 0.0, 0.0))
        shape = (n, self.SLOTS)
        dims, pos, color = (torch.tensor(t).reshape(*shape, 3) for t in (dims, pos, color))
        yaw, kind_idx = torch.tensor(yaw).reshape(shape), torch.tensor(kind_idx).reshape(shape)
        ext = torch.tensor([[o["ext"] if sp.kinds[k] is not None else (0.0, 0.0, 0.0) for k, (o, _) in enumerate(lay)]
                            for sp, lay in zip(specs, layouts)])  # [n, SLOTS, 3]
        there = (kind_idx >= 0)[..., None]
        lo = torch.where(there, pos - ext / 2, torch.full_like(pos, math.inf)).amin(1)
        hi = torch.where(there, pos + ext / 2, torch.full_like(pos, -math.inf)).amax(1)
        dims, yaw, pos, kind_idx, color = (t.to(dev) for t in (dims, yaw, pos, kind_idx, color))
        centre, half = ((lo + hi) / 2).to(dev), ((hi - lo) / 2).norm(dim=1).to(dev)
        # World vertices [n, SLOTS, Vs, 3]: scale, yaw about +Y, move; unused kinds to a point.
        v = self.canon[None, None] * dims[:, :, None, :]
        c, s_ = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
        x = c * v[..., 0] + s_ * v[..., 2]
        z = -s_ * v[..., 0] + c * v[..., 2]
        v = torch.stack([x, v[..., 1], z], -1) + pos[:, :, None, :]
        active = (self.kind_of_vertex[None, None] == kind_idx[..., None])  # [n, SLOTS, Vs]
        v = torch.where(active[..., None], v, pos[:, :, None, :])
        v = v.reshape(n, -1, 3)
        fov = self.s.fov_deg
        radius = half.clamp_min(1e-3) / math.sin(math.radians(fov / 2)) * zoom.to(dev)
        c2w = orbit_camera(el.to(dev), az.to(dev), radius, device=dev)
        c2w = c2w.clone()
        c2w[:, :3, 3] += centre
        cams = Cameras(c2w, torch.full((n,), fov, device=dev), S, S)
        mvp = cams.proj.to(v) @ cams.view.to(v)
        clip = torch.einsum("bvj,bij->bvi", torch.cat([v, torch.ones_like(v[..., :1])], -1), mvp)
        black = torch.zeros(3, device=dev)
        if dev.type == "cuda" and nvdiffrast_available():
            rgb, alpha, _, _, obj_alpha = rasterize_nvdiffrast(self.flat, clip, S, S, black, per_object=True)
        else:
            rgb, alpha, _, _, obj_alpha = rasterize_torch(self.flat, clip, S, S, black, near=cams.near,
                                                          per_object=True)
        # Tint: each pixel's grey shading times its objects' colours (coverage-weighted).
        slot_alpha = obj_alpha.reshape(n, self.SLOTS, K, S, S).sum(2)  # [n, SLOTS, S, S]
        tint = torch.einsum("bkhw,bkc->bhwc", slot_alpha, color) / alpha[..., None].clamp_min(1e-6)
        return (rgb * tint + (1 - alpha[..., None])).clamp(0, 1)


def _unit_shape(kind: str) -> dict:
    """Proportions of the canonical mesh: a unit cube's, so per-axis scales give every shape."""
    if kind == "box":
        return {"size": (1.0, 1.0, 1.0)}
    if kind in ("cylinder", "cone"):
        return {"radius": 0.5, "height": 1.0}
    return {}


def _proportions(kind: str, u) -> list[float]:
    """Extents (x, y, z) of a random instance of ``kind``, longest side 1 (procedural.py's ranges)."""
    if kind == "box":
        d = [u((0.5, 1.0)), u((0.4, 1.0)), u((0.5, 1.0))]
    elif kind in ("cylinder", "cone"):
        r, h = u((0.25, 0.5)), u((0.6, 1.2))
        d = [2 * r, h, 2 * r]
    else:
        d = [1.0, 1.0, 1.0]
    m = max(d)
    return [x / m for x in d]


def _first_pair_only(spec: SceneSpec) -> SceneSpec:
    colors, kinds = [*spec.colors[:2], None], [*spec.kinds[:2], None]
    return SceneSpec(colors, kinds, spec.relations[:1], make_caption(colors, kinds, spec.relations[:1]))


def _overlaps(p, ext, q, ext_q, margin: float) -> bool:
    return all(abs(p[a] - q[a]) < (ext[a] + ext_q[a]) / 2 + margin for a in range(3))
