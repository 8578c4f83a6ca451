"""The one place that talks to ComfyUI's own modules.

Every import of ComfyUI happens inside a function, so the pack imports (and its nodes run)
without ComfyUI: in tests, and in tools that use the node classes as a library. Outside ComfyUI
the output folder is ``$COMBOVERSE_OUTPUT_DIR`` (default ``./output``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import weakref
from pathlib import Path

import torch

# Socket types of this pack. Core types (IMAGE, MASK, MESH, BOUNDING_BOX) are used wherever a
# person or another node may want to step in.
SCENE = "COMBOVERSE_SCENE"  # comboverse_ops.types.scene.Scene: meshes, poses, reference camera
LAYOUT = "COMBOVERSE_LAYOUT"  # comboverse_ops.types.layout.Layout: boxes, phrases, masks in source pixels
MESHES = "COMBOVERSE_MESHES"  # list[comboverse_ops.types.mesh.Mesh], canonical frame, one per object
SAM_MODEL = "COMBOVERSE_SAM"
INPAINT_MODEL = "COMBOVERSE_INPAINT_MODEL"
LIFT3D_MODEL = "COMBOVERSE_LIFT3D_MODEL"


def output_directory() -> Path:
    try:
        import folder_paths
    except ImportError:
        return Path(os.environ.get("COMBOVERSE_OUTPUT_DIR", "output")).resolve()
    return Path(folder_paths.get_output_directory())


def next_output_path(filename_prefix: str, extension: str) -> tuple[Path, str, str]:
    """A fresh ``<prefix>_<counter:05>_.<ext>`` path in the output folder, as SaveGLB names files.

    Returns:
        ``(full_path, filename, subfolder)``, the last two relative to the output folder.
    """
    out_dir = output_directory()
    try:
        import folder_paths
    except ImportError:
        folder_paths = None
    if folder_paths is not None:
        full_folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, str(out_dir))
        full_folder = Path(full_folder)
    else:
        prefix = Path(filename_prefix)
        if prefix.is_absolute() or ".." in prefix.parts:
            raise ValueError(f"filename_prefix: expected a path inside the output folder, got {filename_prefix!r}")
        subfolder, name = str(prefix.parent) if str(prefix.parent) != "." else "", prefix.name
        full_folder = out_dir / subfolder
        full_folder.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in full_folder.iterdir()
                 if (m := re.fullmatch(re.escape(name) + r"_(\d{5})_\..*", p.name))]
        counter = max(taken, default=0) + 1
    filename = f"{name}_{counter:05}_.{extension}"
    return full_folder / filename, filename, subfolder


def workflow_metadata(prompt=None, extra_pnginfo=None) -> dict:
    """What an output file records of the run, as core SaveGLB writes it into ``asset.extras``:
    ``"prompt"`` (the API-format prompt) and each ``extra_pnginfo`` entry (``"workflow"``: the
    graph), each as JSON text. Empty when ComfyUI runs with ``--disable-metadata``."""
    try:
        from comfy.cli_args import args
    except ImportError:
        args = None
    if getattr(args, "disable_metadata", False):
        return {}
    metadata = {}
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    return metadata


def upstream_node(prompt, unique_id, input_name: str) -> str:
    """Who feeds ``input_name`` of node ``unique_id``, from ComfyUI's hidden ``PROMPT`` and
    ``UNIQUE_ID`` inputs: ``"SAM3 Detect (node #12)"``; a generic phrase when unknown."""
    try:
        source_id = str(prompt[str(unique_id)]["inputs"][input_name][0])
        source = prompt[source_id]
        title = (source.get("_meta") or {}).get("title") or source["class_type"]
        return f"{title} (node #{source_id})"
    except (KeyError, IndexError, TypeError):
        return f"the node connected to '{input_name}'"


# Colours of objects 0, 1, 2, ... in the box editor (web/comboverse_boxes.js keeps the same list).
OBJECT_COLOURS = ((0.90, 0.30, 0.24), (0.20, 0.60, 0.86), (0.18, 0.80, 0.44), (0.95, 0.77, 0.06),
                  (0.61, 0.35, 0.71), (0.90, 0.49, 0.13), (0.10, 0.74, 0.61), (0.93, 0.44, 0.69))


def mask_overlay_ui(image_hwc: torch.Tensor, masks: torch.Tensor) -> dict | None:
    """ComfyUI's UI output showing ``masks`` (``[N, H, W]``, 1 = object) in the editor's colours
    over the picture (``[H, W, C]`` in [0, 1]): one PNG in ComfyUI's temp folder, as
    ``{"images": [{"filename", "subfolder", "type": "temp"}]}``. None outside ComfyUI."""
    if _folder_paths() is None:
        return None
    rgb = image_hwc[..., :3].detach().float().cpu().clamp(0, 1)
    out = rgb * 0.45
    for i, m in enumerate(masks.detach().float().cpu()):
        colour = torch.tensor(OBJECT_COLOURS[i % len(OBJECT_COLOURS)])
        out = torch.where(m[..., None] > 0.5, rgb * 0.35 + colour * 0.65, out)
    return temp_image_ui(out, "masks")


def temp_image_ui(image_hwc: torch.Tensor, stem: str) -> dict | None:
    """An ``[H, W, 3]`` image in [0, 1] as ComfyUI's UI output (a PNG in its temp folder, shown
    under the node): ``{"images": [{"filename", "subfolder", "type": "temp"}]}``; None outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return None
    from PIL import Image

    folder = Path(fp.get_temp_directory()) / "comboverse"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{stem}_{os.getpid()}_{next(_OVERLAYS):05}.png"
    pixels = (image_hwc[..., :3].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / name, compress_level=1)
    return {"images": [{"filename": name, "subfolder": "comboverse", "type": "temp"}]}


_OVERLAYS = itertools.count()


def make_core_mesh(vertices: torch.Tensor, faces: torch.Tensor, vertex_colors: torch.Tensor | None = None):
    """A ComfyUI core ``MESH`` (``vertices [B,N,3]`` float, ``faces [B,M,3]`` int, a plain tensor
    batch, which core SaveGLB / Preview3D of every version read).

    ``vertex_colors``: ``[B,N,3]`` **linear** values in [0, 1], core's convention (its SaveGLB
    writes them to glTF ``COLOR_0`` unchanged); convert the pack's sRGB colours with
    :func:`..comboverse_ops.types.colorspace.srgb_to_linear` first. Uses ComfyUI's own class; the
    colours go to its constructor where that version takes them, else onto the object as an
    attribute (which older SaveGLB ignores). Outside ComfyUI a small stand-in with the same
    attributes is returned.
    """
    mesh_cls = None
    try:
        from comfy_api.latest import Types
        mesh_cls = getattr(Types, "MESH", None)  # newer ComfyUI
    except ImportError:
        pass
    if mesh_cls is None:
        try:  # earlier ComfyUI keeps MESH beside its Hunyuan3D nodes
            from comfy_extras.nodes_hunyuan3d import MESH as mesh_cls
        except ImportError:
            mesh_cls = None
    if mesh_cls is None:
        return CoreMeshStandIn(vertices, faces, vertex_colors)
    if vertex_colors is not None:
        try:
            return mesh_cls(vertices, faces, vertex_colors=vertex_colors)
        except TypeError:  # ComfyUI before vertex colours on MESH (2026-05)
            pass
    mesh = mesh_cls(vertices, faces)
    if vertex_colors is not None:
        mesh.vertex_colors = vertex_colors
    return mesh


class CoreMeshStandIn:
    """What ComfyUI's MESH carries, for use outside ComfyUI only."""

    def __init__(self, vertices, faces, vertex_colors=None):
        self.vertices, self.faces, self.vertex_colors = vertices, faces, vertex_colors


class Progress:
    """A ``callback(step, total, preview=None)`` that drives ComfyUI's progress bar.

    Every call also checks ComfyUI's Cancel button (throttled bar updates skip that check).
    ``preview`` is an ``[H, W, 3]`` float image in [0, 1] or None. Outside ComfyUI it does nothing.
    """

    def __init__(self, total: int):
        try:
            import comfy.model_management as mm
            import comfy.utils
        except ImportError:
            self._bar = self._mm = None
            return
        self._bar, self._mm = comfy.utils.ProgressBar(total), mm

    def __call__(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        if self._bar is None:
            return
        self._mm.throw_exception_if_processing_interrupted()
        pil = None
        if preview is not None:
            from PIL import Image
            pil = ("JPEG", Image.fromarray((preview.detach().clamp(0, 1) * 255).byte().cpu().numpy()), 512)
        self._bar.update_absolute(step, total, pil)


# ----------------------------------------------------------------------------------------------
# Model folders, devices and ComfyUI's memory manager (Segment / Inpaint loaders)

from ..comboverse_ops.models.folders import (  # noqa: E402
    CHECKPOINTS_FOLDER, SAM_FOLDER, TRIPOSR_FOLDER, WEIGHT_SUFFIXES, default_models_dir)

PACK_FOLDERS = (SAM_FOLDER, TRIPOSR_FOLDER)  # model folders this pack adds to ComfyUI's
_PT_EXTENSIONS = set(WEIGHT_SUFFIXES)


def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def in_comfyui() -> bool:
    """Whether ComfyUI's modules are there (UI outputs such as previews are made only then)."""
    return _folder_paths() is not None


def models_directory() -> Path:
    """ComfyUI's models folder, or ``$COMBOVERSE_MODELS_DIR`` (default ``./models``) outside ComfyUI."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.models_dir)
    return default_models_dir().resolve()


def register_model_folders() -> None:
    """Make ComfyUI know the pack's model folders, ``models/sams`` and ``models/triposr``
    (idempotent; a folder another pack registered is kept)."""
    fp = _folder_paths()
    if fp is None:
        return
    for folder in PACK_FOLDERS:
        path = os.path.join(fp.models_dir, folder)
        if folder not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[folder] = ([path], set(_PT_EXTENSIONS))
        elif path not in fp.folder_names_and_paths[folder][0]:
            fp.add_model_folder_path(folder, path)


def model_folder_paths(folder: str) -> list[Path]:
    """The folders searched for model kind ``folder`` ("sams", "checkpoints", "diffusers")."""
    fp = _folder_paths()
    if fp is not None:
        register_model_folders()
        try:
            return [Path(p) for p in fp.get_folder_paths(folder)]
        except KeyError:
            return [Path(fp.models_dir) / folder]
    return [models_directory() / folder]


def model_files(folder: str) -> list[str]:
    """Weight files of a model folder, relative names as ComfyUI lists them, sorted."""
    fp = _folder_paths()
    if fp is not None:
        register_model_folders()
        try:
            return [f for f in fp.get_filename_list(folder) if Path(f).suffix.lower() in _PT_EXTENSIONS]
        except KeyError:
            return []
    names = set()
    for root in model_folder_paths(folder):
        if root.is_dir():
            names |= {p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix.lower() in _PT_EXTENSIONS}
    return sorted(names)


def resolve_model_file(folder: str, name: str, node: str) -> Path:
    """The file ``name`` of model folder ``folder``; an existing absolute path is taken as it is.

    Raises:
        FileNotFoundError: naming the folders searched and the node that loads the file.
    """
    if not name:
        raise FileNotFoundError(f"{node}: no model file chosen; put one into "
                                f"{[str(p) for p in model_folder_paths(folder)]}")
    p = Path(name)
    if p.is_absolute():
        if p.exists():
            return p
        raise FileNotFoundError(f"{node}: {name} does not exist")
    for root in model_folder_paths(folder):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{node}: {name!r} is not in the models/{folder} folder (searched "
                            f"{[str(r) for r in model_folder_paths(folder)]}); put the file there and refresh")


SD_DIFFUSERS_PREFIX = "diffusers/"


def sd_model_choices() -> list[str]:
    """Checkpoint files (models/checkpoints) and diffusers folders (models/diffusers, as ``diffusers/<name>``)."""
    names = list(model_files(CHECKPOINTS_FOLDER))
    for root in model_folder_paths("diffusers"):
        if root.is_dir():
            names += sorted(SD_DIFFUSERS_PREFIX + p.parent.relative_to(root).as_posix()
                            for p in root.rglob("model_index.json"))
    return names


def resolve_sd_model(name: str, node: str) -> Path:
    """A checkpoint file or diffusers folder chosen in :func:`sd_model_choices` (or an absolute path)."""
    if name.startswith(SD_DIFFUSERS_PREFIX) and not Path(name).is_absolute():
        return resolve_model_file("diffusers", name[len(SD_DIFFUSERS_PREFIX):], node)
    return resolve_model_file(CHECKPOINTS_FOLDER, name, node)


def clip_tokenizer_dirs() -> list[Path]:
    """Folders holding a CLIP BPE tokenizer that come with the host.

    Inside ComfyUI: ``comfy/sd1_tokenizer`` (vocab.json + merges.txt), found from the ``comfy``
    package's location without importing anything; then ``models/clip_tokenizer`` for users
    who put one there by hand.
    """
    import importlib.util

    dirs = []
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "sd1_tokenizer" for p in spec.submodule_search_locations]
    dirs.append(models_directory() / "clip_tokenizer")
    return dirs


def model_folder_choices(kind: str) -> list[str]:
    """Subfolders (``save_pretrained`` model folders) of ComfyUI's ``models/<kind>``, sorted; the
    folder kind is registered with ComfyUI first (kept if another pack registered it)."""
    fp = _folder_paths()
    if fp is not None:
        path = os.path.join(fp.models_dir, kind)
        if kind not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[kind] = ([path], set())
        elif path not in fp.folder_names_and_paths[kind][0]:
            fp.add_model_folder_path(kind, path)
    names = set()
    for root in model_folder_paths(kind):
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)


def resolve_model_folder(kind: str, name: str, node: str, what: str) -> Path:
    """The folder ``name`` of ``models/<kind>`` (an absolute path is taken as it is). A missing
    one resolves to where it should be, so the loader's error names that path."""
    roots = model_folder_paths(kind)
    if not name:
        raise FileNotFoundError(f"{node}: no model folder chosen; put {what} into {[str(r) for r in roots]} "
                                "and refresh")
    p = Path(name)
    if p.is_absolute():
        return p
    return next((root / name for root in roots if (root / name).exists()), roots[0] / name)


def model_devices() -> tuple[torch.device, torch.device]:
    """``(load_device, offload_device)``: ComfyUI's, else CUDA (or CPU) for both."""
    try:
        import comfy.model_management as mm
    except ImportError:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return dev, dev
    return torch.device(mm.get_torch_device()), torch.device(mm.unet_offload_device())


def load_from_folder(load, folder, node: str):
    """``load(folder, device=..., dtype=...)`` for a loader node: onto ComfyUI's offload device, in
    the precision of the device it will run on (one policy, comboverse_ops.models.precision); a
    file problem names ``node``."""
    from ..comboverse_ops.models.precision import model_dtype

    load_device, offload = model_devices()
    try:
        return load(folder, device=offload, dtype=model_dtype("auto", load_device))
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{node}: {e}") from e


def intermediate_device() -> torch.device:
    """Where node outputs live (ComfyUI's intermediate device; the CPU outside ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return torch.device(mm.intermediate_device())


_PATCHERS: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def use_models(modules: list[torch.nn.Module], memory_required: int = 0) -> torch.device:
    """Put ``modules`` on the compute device before running them; return that device.

    Inside ComfyUI each module is handed (once) to ComfyUI's memory manager as a ModelPatcher,
    and ``load_models_gpu`` loads it fully, offloading other models if needed; ComfyUI may move
    it back to the offload device later. Outside ComfyUI the modules stay where the loader put
    them.
    """
    try:
        import comfy.model_management as mm
        import comfy.model_patcher
    except ImportError:
        first = next(iter(modules[0].parameters()), None) if modules else None
        return first.device if first is not None else torch.device("cpu")
    patchers = []
    for m in modules:
        p = _PATCHERS.get(m)
        if p is None:
            cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
            p = cls(m, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
            _PATCHERS[m] = p
        patchers.append(p)
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
    return torch.device(mm.get_torch_device())


# ----------------------------------------------------------------------------------------------
# Lift3D: input files, cancel checks

def input_directory() -> Path:
    """ComfyUI's input folder, or ``$COMBOVERSE_INPUT_DIR`` (default ``./input``) outside ComfyUI."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("COMBOVERSE_INPUT_DIR", "input")).resolve()


def resolve_input_file(name: str, node: str) -> Path:
    """A file named relative to the input folder (or its ``3d/`` subfolder, where Load3D keeps
    uploads), or an absolute path.

    Raises:
        FileNotFoundError: naming the places searched and the node whose input to fix.
    """
    p = Path(name.strip().strip('"'))
    candidates = [p] if p.is_absolute() else [input_directory() / p, input_directory() / "3d" / p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{node}: mesh file {name!r} not found (looked at {[str(c) for c in candidates]}); "
                            "give a path relative to ComfyUI's input folder or an absolute path")


def check_cancel() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (no-op outside ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


# ----------------------------------------------------------------------------------------------
# SSDS guidance

GUIDANCE_MODEL = "COMBOVERSE_GUIDANCE_MODEL"  # comboverse_ops.models.sd.SDModel, text-to-image (4-channel UNet)


def validation(check) -> bool | str:
    """A loader's ``VALIDATE_INPUTS`` answer: True, or the message of the ``ValueError`` /
    ``FileNotFoundError`` that ``check()`` raised. ComfyUI checks every node of a prompt before it
    runs any, so a missing, empty or truncated model file is named before the first model runs."""
    try:
        check()
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return True
