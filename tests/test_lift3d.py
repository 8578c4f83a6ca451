"""Lift3D: the built-in TripoSR against the official implementation, marching cubes, frames, nodes.

tests/data/triposr_tiny/ holds a reduced configuration in the official schema and seeded random
weights saved as the official code saves them; tests/data/triposr_reference.safetensors holds
what the official implementation computed from them (tests/data/README.md says how).
"""

import importlib
import shutil
from pathlib import Path

import pytest
import torch

from comboverse_ops.lift3d.checkpoint import build_triposr, load_triposr, read_state_dict
from comboverse_ops.lift3d.config import load_triposr_config
from comboverse_ops.meshio.frames import frame_rotation
from comboverse_ops.lift3d.preprocess import conditioning_images, is_framed
from comboverse_ops.lift3d.reconstruct import Lift3DSettings, reconstruct_objects
from comboverse_ops.lift3d.surface import marching_cubes, sample_density_grid
from comboverse_ops.meshio.decimate import decimate
from comboverse_ops.lift3d.triposr import TripoSR, resize_for_tokenizer
from comboverse_ops.types.mesh import Mesh

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "triposr_tiny"


def _trimesh(mesh):
    import trimesh

    return trimesh.Trimesh(mesh.vertices.double().numpy(), mesh.faces.numpy(), process=False)


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    return load_file(str(DATA / "triposr_reference.safetensors"))


@pytest.fixture(scope="module")
def tiny_model():
    return build_triposr(TINY / "model.ckpt")


def test_checkpoint_keys_and_shapes_follow_the_official_names_exactly(tiny_model):
    official = read_state_dict(TINY / "model.ckpt")  # written by the official code's state_dict()
    ours = tiny_model.state_dict()
    assert list(ours) == list(official)  # same names, same order
    assert all(ours[k].shape == official[k].shape for k in official)
    assert "image_tokenizer.model.encoder.layer.1.attention.attention.query.weight" in ours
    assert "backbone.transformer_blocks.1.ff.net.2.weight" in ours and "decoder.layers.6.weight" in ours


def test_outputs_match_the_official_implementation(tiny_model, reference):
    image = reference["image_uint8"].float()[None] / 255.0  # 72x72: exercises the antialiased resize
    with torch.no_grad():
        x = resize_for_tokenizer(image, tiny_model.image_size)
        tokens = tiny_model.image_tokenizer(x)
        codes = tiny_model.encode(x)
        out = tiny_model.query(codes[0], reference["points"])
    assert (tokens.transpose(1, 2) - reference["image_tokens"][:, 0]).abs().max() < 1e-4
    assert codes.shape == reference["scene_codes"].shape
    assert (codes - reference["scene_codes"]).abs().max() < 1e-4
    assert (out["density"] - reference["density_act"][:, 0]).abs().max() < 1e-4
    assert (out["color"] - reference["color"]).abs().max() < 1e-4


def test_safetensors_conversion_with_transformers5_vit_names_loads_the_same_model(tmp_path, tiny_model, reference):
    from safetensors.torch import save_file

    renamed = {}
    for k, v in read_state_dict(TINY / "model.ckpt").items():
        k = (k.replace("encoder.layer.", "layers.").replace("attention.attention.query", "attention.q_proj")
             .replace("attention.attention.key", "attention.k_proj")
             .replace("attention.attention.value", "attention.v_proj")
             .replace("attention.output.dense", "attention.o_proj").replace("intermediate.dense", "mlp.fc1")
             .replace(".output.dense", ".mlp.fc2"))
        renamed[k] = v.contiguous()
    assert "image_tokenizer.model.layers.0.attention.q_proj.weight" in renamed
    save_file(renamed, str(tmp_path / "triposr.safetensors"))
    shutil.copytree(TINY / "dino-tiny", tmp_path / "dino-tiny")
    shutil.copy(TINY / "config.yaml", tmp_path / "config.yaml")
    loaded = load_triposr(tmp_path / "triposr.safetensors", cache=None).model
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_the_shipped_config_is_the_released_architecture():
    cfg = load_triposr_config()  # no network: the DINO config ships with the pack
    vit = cfg.vit
    assert (cfg.cond_image_size, vit.hidden_size, vit.num_hidden_layers, vit.patch_size) == (512, 768, 12, 16)
    assert (cfg.backbone.num_layers, cfg.backbone.in_channels, cfg.post_processor.out_channels) == (16, 1024, 40)
    with torch.device("meta"):
        model = TripoSR(cfg)
    assert sum(p.numel() for p in model.parameters()) == 419_275_628  # the official model's count


def test_the_model_cache_loads_a_checkpoint_once(tmp_path):
    from comboverse_ops.models import ModelCache

    cache = ModelCache()
    a = load_triposr(TINY / "model.ckpt", cache=cache)
    b = load_triposr(TINY / "model.ckpt", cache=cache)
    c = load_triposr(TINY / "model.ckpt", cache=cache, dtype=torch.float64)
    assert a is b and c is not a and len(cache) == 2
    assert next(c.model.parameters()).dtype == torch.float64


def _copy_tiny(folder: Path, weights: dict | None = None, name="model.ckpt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(TINY / "dino-tiny", folder / "dino-tiny", dirs_exist_ok=True)
    shutil.copy(TINY / "config.yaml", folder / "config.yaml")
    if weights is None:
        shutil.copy(TINY / "model.ckpt", folder / name)
    else:
        torch.save(weights, folder / name)
    return folder / name


def test_checkpoints_of_the_wrong_kind_get_errors_that_name_them(tmp_path):
    from safetensors.torch import save_file

    sam = {"image_encoder.patch_embed.proj.weight": torch.zeros(4, 3, 2, 2),
           "mask_decoder.iou_token.weight": torch.zeros(1, 4)}
    with pytest.raises(ValueError, match="Segment Anything"):
        build_triposr(_copy_tiny(tmp_path / "sam", sam, "sam_vit_b.pth"))
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 9, 3, 3),
          "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}
    save_file(sd, str(tmp_path / "sd.safetensors"))
    with pytest.raises(ValueError, match="Stable Diffusion.*models/triposr"):
        build_triposr(tmp_path / "sd.safetensors")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.ckpt is not a valid checkpoint: expected a PyTorch file"):
        build_triposr(tmp_path / "notes.ckpt")
    with pytest.raises(FileNotFoundError, match="models/triposr"):
        build_triposr(tmp_path / "missing.ckpt")


def test_a_config_that_does_not_match_the_checkpoint_is_named(tmp_path):
    ckpt = _copy_tiny(tmp_path)
    text = (tmp_path / "config.yaml").read_text().replace("num_layers: 2", "num_layers: 1")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="not part of the configured model.*config.yaml"):
        build_triposr(ckpt)
    text = text.replace("num_layers: 1", "num_layers: 2")
    (tmp_path / "config.yaml").write_text(text.replace("out_channels: 8", "out_channels: 6"))
    with pytest.raises(ValueError, match="decoder.in_channels"):
        build_triposr(ckpt)
    (tmp_path / "config.yaml").write_text(text.replace("n_neurons: 16", "n_neurons: 16\n  depth: 3"))
    with pytest.raises(ValueError, match=r"decoder: unknown key\(s\) \['depth'\]"):
        build_triposr(ckpt)


def _sphere_density(radius: float, center=(0.0, 0.0, 0.0), level: float = 25.0, scale=(1.0, 1.0, 1.0)):
    c = torch.tensor(center)
    s = torch.tensor(scale)

    def density(p):
        return level + 10.0 * (radius - ((p - c) / s).norm(dim=1))
    return density


def test_marching_cubes_on_a_sphere_is_watertight_with_the_true_radius():
    grid = sample_density_grid(_sphere_density(0.5), 0.87, 64, chunk=10_000)
    verts, faces = marching_cubes(grid, 25.0, 0.87)
    mesh = _trimesh(Mesh(verts, faces))
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # counter-clockwise from outside: normals point out
    r = verts.norm(dim=1)
    assert abs(float(r.mean()) - 0.5) / 0.5 < 0.01 and float((r - 0.5).abs().max()) < 0.01


def test_marching_cubes_keeps_the_grid_axes_and_closes_surfaces_cut_by_the_boundary():
    # An ellipsoid with semi-axes (0.6, 0.3, 0.15) centred at x = 0.4: it spans x in [-0.2, 1.0],
    # which the grid cuts at +0.87; axes, offset and the cut come back as given.
    grid = sample_density_grid(_sphere_density(1.0, (0.4, 0.0, 0.0), scale=(0.6, 0.3, 0.15)), 0.87, 64)
    verts, faces = marching_cubes(grid, 25.0, 0.87)
    lo, hi = verts.amin(0), verts.amax(0)
    assert torch.allclose(lo, torch.tensor([-0.2, -0.3, -0.15]), atol=0.02)
    assert torch.allclose(hi[1:], torch.tensor([0.3, 0.15]), atol=0.02)
    assert 0.87 <= float(hi[0]) <= 0.87 + 2 * 0.87 / 63  # closed at most one cell beyond the grid
    assert _trimesh(Mesh(verts, faces)).is_watertight  # closed where the box cuts it
    empty_v, empty_f = marching_cubes(torch.zeros(8, 8, 8), 25.0, 0.87)
    assert empty_v.shape == (0, 3) and empty_f.shape == (0, 3)


def test_decimation_meets_the_face_budget_and_keeps_shape_and_colours():
    grid = sample_density_grid(_sphere_density(0.5), 0.87, 96)
    verts, faces = marching_cubes(grid, 25.0, 0.87)
    colors = (verts + 0.5).clamp(0, 1)  # a colour gradient that must survive
    mesh = Mesh(verts, faces, vertex_colors=colors)
    small = decimate(mesh, 2000)
    assert small.num_faces <= 2000 and _trimesh(small).is_watertight
    assert abs(float(small.vertices.norm(dim=1).mean()) - 0.5) < 0.01
    assert (small.vertex_colors - (small.vertices + 0.5).clamp(0, 1)).abs().max() < 0.08
    assert decimate(mesh, 0) is mesh and decimate(small, 5000) is small


def test_when_collapses_stall_decimation_keeps_the_largest_pieces_within_budget(monkeypatch):
    import fast_simplification

    sphere = Mesh(*marching_cubes(sample_density_grid(_sphere_density(0.4), 0.87, 48), 25.0, 0.87))
    tet_v = torch.tensor([[0.0, 0, 0], [0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]])
    tet_f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    verts, faces = [sphere.vertices], [sphere.faces]
    for i in range(500):  # floaters of a noisy reconstruction
        verts.append(tet_v + torch.tensor([0.6 + 0.02 * (i % 20), 0.02 * (i // 20), 0.0]))
        faces.append(tet_f + sphere.num_vertices + 4 * i)
    noisy = Mesh(torch.cat(verts), torch.cat(faces))
    # Quadric collapse stops early on meshes of very many tiny pieces (seen on a 256^3 grid of a
    # random-weight model); simulate a collapse that removes nothing.
    monkeypatch.setattr(fast_simplification, "simplify", lambda points, faces, target_count: (points, faces))
    budget = sphere.num_faces + 40
    small = decimate(noisy, budget)
    assert small.num_faces == budget  # the sphere and the 10 largest (equal) floaters
    assert int((small.vertices[:, 0] > 0.5).sum()) == 40
    coarse = decimate(noisy, 1000)  # the sphere alone is too big: vertices get clustered
    assert coarse.num_faces <= 1000 and float(coarse.vertices[:, 0].max()) < 0.45
    assert abs(float(coarse.vertices.norm(dim=1).mean()) - 0.4) < 0.02


class _TripoSRFrameField(torch.nn.Module):
    """A stand-in for TripoSR with a known answer, in TripoSR's frame (front +X, up +Z):
    a tall box (long along Z) with a nose on +X, red at the top and blue at the bottom."""

    image_size, radius = 32, 0.87

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def encode(self, images):
        return images.mean(dim=(1, 2, 3))[:, None]

    def query(self, code, p):
        box = torch.maximum((p / torch.tensor([0.2, 0.25, 0.5])).abs().amax(dim=1), torch.zeros(()))
        nose = ((p - torch.tensor([0.25, 0.0, 0.0])) / 0.12).norm(dim=1)
        inside = torch.minimum(box, nose)
        color = torch.stack([(p[:, 2] > 0).float(), torch.zeros_like(p[:, 0]), (p[:, 2] <= 0).float()], dim=1)
        return {"density": 50.0 * (1.5 - inside).clamp_min(0), "color": color}


def test_triposr_frame_is_rotated_so_the_front_faces_plus_z_and_the_top_plus_y():
    images = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 40, 40)
    masks[0, 5:35, 10:30] = 1
    settings = Lift3DSettings(resolution=48, max_faces=800)
    (mesh,), cond = reconstruct_objects(_TripoSRFrameField(), images, masks, settings)
    lo, hi = mesh.bounds()
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-5)
    # TripoSR (y, z, x) half sizes (0.25, 0.5, 0.2 + nose 0.17) become canonical (x, y, z) extents
    assert torch.allclose(hi - lo, torch.tensor([0.5, 1.0, 0.57]), atol=0.03)
    v = mesh.vertices
    front, back = v[:, 2] > 0.2, v[:, 2] < -0.2
    assert front.any() and float(v[front, 0].abs().max()) < 0.13  # the narrow nose (TripoSR +X) is on +Z
    assert float(v[back, 0].abs().max()) > 0.2  # the flat back of the box is on -Z
    top = mesh.vertices[:, 1] > 0.2
    bottom = mesh.vertices[:, 1] < -0.2
    assert (mesh.vertex_colors[top, 0] > 0.9).all() and (mesh.vertex_colors[bottom, 2] > 0.9).all()
    assert mesh.num_faces <= 800 and cond.shape == (1, 32, 32, 3)
    rot = frame_rotation("+X", "+Z").float()
    assert torch.allclose(rot @ torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]))  # front -> +Z
    assert torch.allclose(rot @ torch.tensor([0, 1.0, 0]), torch.tensor([1.0, 0, 0]))  # image right -> +X
    assert torch.det(rot) == pytest.approx(1.0)


def test_crops_are_recentred_on_grey_from_their_masks():
    image = torch.zeros(1, 60, 100, 3)
    image[..., 0] = 1.0  # red everywhere; only the masked part may survive
    mask = torch.zeros(1, 60, 100)
    mask[0, 5:25, 60:100] = 1  # a 40x20 object in the top-right corner
    cond = conditioning_images(image, mask, 100, foreground_ratio=0.8)[0]
    red = (cond[..., 0] > 0.75) & (cond[..., 1] < 0.25)
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert abs(float(xs.float().mean()) - 49.5) < 1.5 and abs(float(ys.float().mean()) - 49.5) < 1.5
    assert abs(int(xs.max() - xs.min() + 1) - 80) <= 2  # the longer side spans 80% of the image
    assert torch.allclose(cond[0, 0], torch.full((3,), 0.5))  # grey background


def _object_picture(h=300, w=400):
    """A random-colour picture with an ellipse and a rectangle object (masks 1 = object)."""
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(3))
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    ellipse = (((xx - 170) / 90) ** 2 + ((yy - 140) / 60) ** 2 <= 1).float()
    rect = ((xx > 50) & (xx < 251) & (yy > 30) & (yy < 120)).float()
    return image, [ellipse, rect]


def _resized(crop_hwc, size):
    x = crop_hwc.permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(x, (size, size), mode="bilinear", align_corners=False,
                                           antialias=True)[0].permute(1, 2, 0)


def test_a_segment_crop_reaches_the_model_as_segment_framed_it():
    """Framed once: Lift3D takes Segment's crops as they are. Before, it composited them over grey
    a second time and framed them again (cutting off the antialiased fringe): the model saw edge
    pixels up to 0.16 (ellipse) and 0.23 (rectangle) off Segment's 512 px grey crops."""
    from comboverse_ops.decompose.crops import RecenterSettings, recenter_object

    image, masks = _object_picture()
    for mask in masks:
        grey = recenter_object(image, mask, RecenterSettings(size=512))
        assert is_framed(grey.mask)
        cond = conditioning_images(grey.image[None], grey.mask[None], 512)[0]
        assert torch.equal(cond, grey.image)  # on grey at TripoSR's 512: exactly Segment's crop
        small = recenter_object(image, mask, RecenterSettings(size=256))
        cond = conditioning_images(small.image[None], small.mask[None], 512)[0]
        assert float((cond - _resized(small.image, 512)).abs().max()) < 1e-6  # only resized
        white = recenter_object(image, mask, RecenterSettings(size=512, background="white"))
        a = white.mask[..., None]
        cond = conditioning_images(white.image[None], white.mask[None], 512)[0]
        assert float((cond - (white.image * a + 0.5 * (1 - a))).abs().max()) < 1e-6  # only put on grey
        assert torch.allclose(cond[0, 0], torch.full((3,), 0.5))


def test_segment_crops_count_as_framed_over_shapes_sizes_and_ratios():
    from comboverse_ops.decompose.crops import RecenterSettings, recenter_object

    g = torch.Generator().manual_seed(5)
    for k in range(24):
        h, w = (int(v) for v in torch.randint(40, 700, (2,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        cx, cy = float(torch.rand(1, generator=g)) * w, float(torch.rand(1, generator=g)) * h
        ax, ay = 4 + float(torch.rand(1, generator=g)) * w / 3, 4 + float(torch.rand(1, generator=g)) * h / 3
        mask = (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1) if k % 2 else \
            (((xx - cx).abs() < ax) & ((yy - cy).abs() < ay))
        size, ratio = (512, 256, 64, 128)[k % 4], (0.85, 0.7, 0.95)[k % 3]
        crop = recenter_object(torch.rand(h, w, 3, generator=g), mask.float(),
                               RecenterSettings(size=size, foreground_ratio=ratio))
        assert is_framed(crop.mask, ratio), (k, h, w, size, ratio)
        assert torch.equal(conditioning_images(crop.image[None], crop.mask[None], size, foreground_ratio=ratio)[0],
                           crop.image)


@pytest.mark.parametrize("shift, side", [((0, 5), 85), ((-3, 0), 85), ((0, 0), 60), ((0, 0), 95)])
def test_an_off_centre_or_loosely_framed_crop_is_framed_again(shift, side):
    """Crops from elsewhere (another node, a loaded picture and its mask) still get TripoSR's framing."""
    image = torch.zeros(1, 100, 100, 3)
    image[..., 0] = 1.0  # red; only the masked part survives
    mask = torch.zeros(1, 100, 100)
    y0, x0 = 50 - side // 2 + shift[0], 50 - side // 2 + shift[1]
    mask[0, y0 + 10:y0 + side - 10, x0:x0 + side] = 1  # wider than tall
    assert not is_framed(mask[0], 0.85)
    cond = conditioning_images(image, mask, 200, foreground_ratio=0.85)[0]
    ys, xs = torch.nonzero(cond[..., 0] > 0.75, as_tuple=True)  # coverage above 0.5
    assert abs(int(xs.max() - xs.min() + 1) - 170) <= 2  # 0.85 of 200
    assert abs(float(xs.min() + xs.max() + 1) / 2 - 100) <= 1.5 and abs(float(ys.min() + ys.max() + 1) / 2 - 100) <= 1.5


def test_a_crop_that_is_not_square_is_never_taken_as_framed():
    mask = torch.zeros(100, 120)
    mask[8:93, 18:103] = 1  # 85 px in the middle, but of a 100 x 120 crop
    assert not is_framed(mask, 0.85)
    assert is_framed(mask[:, 10:110], 0.85)


def test_an_empty_mask_or_a_blank_crop_is_a_clear_error(tiny_model):
    images = torch.rand(2, 32, 32, 3)
    masks = torch.ones(2, 32, 32)
    masks[1] = 0
    with pytest.raises(ValueError, match="object_1: its mask is empty.*Segment"):
        reconstruct_objects(tiny_model, images, masks)
    with pytest.raises(ValueError, match="object_0: the crop is a single flat colour"):
        reconstruct_objects(tiny_model, torch.full((1, 32, 32, 3), 0.5))
    with pytest.raises(ValueError, match=r"masks: expected one \[H, W\] mask per crop"):
        reconstruct_objects(tiny_model, images, masks[:1])
    with pytest.raises(ValueError, match="never reaches density_threshold 25"):
        reconstruct_objects(tiny_model, images, torch.ones(2, 32, 32), Lift3DSettings(resolution=16))
    with pytest.raises(ValueError, match="Lift3D resolution"):
        Lift3DSettings(resolution=4)


def test_lift3d_nodes_load_the_model_from_the_model_folder_and_make_meshes(pack, tmp_path, monkeypatch):
    nodes = importlib.import_module(f"{pack.__name__}.nodes.lift3d")
    monkeypatch.setenv("COMBOVERSE_MODELS_DIR", str(tmp_path / "models"))
    _copy_tiny(tmp_path / "models" / "triposr")
    choices = nodes.LoadLift3DModel.INPUT_TYPES()["required"]["ckpt_name"][0]
    assert choices == ["model.ckpt"]
    (model,) = nodes.LoadLift3DModel().load(ckpt_name="model.ckpt", precision="fp32")
    assert nodes.LoadLift3DModel().load(ckpt_name="model.ckpt", precision="fp32")[0] is model  # shared cache
    with pytest.raises(FileNotFoundError, match="models/triposr"):
        nodes.LoadLift3DModel().load(ckpt_name="other.ckpt", precision="fp32")

    images = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 48, 40)
    masks[0, 4:44, 8:30] = 1
    masks[1, 10:30, 5:35] = 1
    images_before, masks_before = images.clone(), masks.clone()
    calls = []
    monkeypatch.setattr(pack.nodes.host, "Progress", lambda total: (lambda s, t, p=None: calls.append((s, t))))
    meshes, cond = nodes.Lift3D().lift(model, images, resolution=32, density_threshold=0.5, max_faces=300,
                                       foreground_ratio=0.85, vertex_colors=True, masks=masks)
    assert calls == [(1, 2), (2, 2)]
    assert [m.name for m in meshes] == ["object_0", "object_1"] and cond.shape == (2, 64, 64, 3)
    for m in meshes:
        lo, hi = m.bounds()
        assert float((hi - lo).max()) == pytest.approx(1.0, abs=1e-5) and m.num_faces <= 300
        assert m.vertex_colors is not None and 0 <= float(m.vertex_colors.min()) and float(m.vertex_colors.max()) <= 1
    assert torch.equal(images, images_before) and torch.equal(masks, masks_before)


def test_lift3d_benchmark_runs_tiny_on_cpu():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "lift3d.py"), "--tiny", "--objects", "1"],
                         capture_output=True, text=True, check=True, cwd=root, timeout=120)
    assert "s/object" in out.stdout
