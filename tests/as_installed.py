"""Run the pack as ComfyUI-Manager installs it: a plain folder in custom_nodes, only
requirements.txt installed, ``comboverse_ops`` NOT importable as a top-level package.

Started by tests/test_as_installed.py in a fresh interpreter (``python -I``, so neither
``PYTHONPATH`` nor the current folder is on ``sys.path``)::

    python -I tests/as_installed.py SPEC.json REPORT.json

``SPEC.json``: ``{"pack": folder, "runner": workflow_runner.py, "workflows": [api json, ...],
"model_files": {class_type: {widget: value}}, "boxes": [[x0, y0, x1, y1], ...],
"threads": n}``. The process first takes away
anything that makes the checkout importable (an editable install's finder or ``.pth`` path, the
checkout on ``sys.path``) and refuses to go on if ``comboverse_ops`` still imports: an absolute
import of the pack's own modules must fail here as it fails in ComfyUI. It then loads the folder
the way ComfyUI's ``load_custom_node`` does (``spec_from_file_location`` of its ``__init__.py``,
the module named after the folder's path, dashes and all) and runs each API workflow through the
node classes in graph order at its shipped widget values; only the model-file widgets named in
``model_files`` change (tiny models in the real formats stand in for the released files), and
Segment in automatic mode (empty ``boxes_text``, SAM connected, no boxes input) gets the picture's first
``auto_objects`` boxes from ``boxes``: automatic proposals need a trained SAM, and a tiny random
one proposes nothing, so the boxes come with the picture, as a user's would.
Core nodes are stand-ins (below); tests/test_comfyui_real.py runs the real ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

PACKAGE = "comboverse_ops"


def forget_the_checkout() -> None:
    """Remove every way ``comboverse_ops`` could be imported without the pack folder: the finders
    and path hooks an editable install adds (setuptools names their modules ``__editable__...``)
    and ``sys.path`` entries that hold the package (a "compat" editable install, or a checkout).
    Exits with a message if it is still importable, so the check can never pass by accident."""
    def editable(obj) -> bool:
        return "__editable__" in (getattr(obj, "__module__", "") or "") or \
               "__editable__" in type(obj).__module__

    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / PACKAGE / "__init__.py").is_file()]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None:
        sys.exit(f"as_installed: {PACKAGE} is still importable from {spec.origin}; the installed-like check "
                 "needs an interpreter where only the pack folder provides it")


def load_pack_folder(folder: Path):
    """What ComfyUI's nodes.load_custom_node does with a folder in custom_nodes."""
    name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_file_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirement_name(text: str) -> str:
    import re

    return re.split(r"[<>=!~\[;( ]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` bring in, with everything they require in turn
    (requirements that only an extra asks for left out), by normalised name."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), [_requirement_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [_requirement_name(r) for r in requires(name) or [] if "extra ==" not in r.replace('"', "'")
                     .replace("extra=='", "extra == '")]
        except PackageNotFoundError:
            pass
    return seen


class ImportWatch:
    """A ``sys.meta_path`` finder that finds nothing: it records which module first imported each
    top-level module, so that an import the pack makes can be told from an optional one a
    dependency makes of whatever happens to be installed (httpcore tries ``import trio``)."""

    def __init__(self):
        self.importer: dict[str, str] = {}

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in self.importer:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            self.importer[top] = frame.f_globals.get("__name__", "") if frame is not None else ""
        return None


def imported_outside(allowed: set[str], before: set[str], watch: ImportWatch, pack_name: str) -> dict[str, list[str]]:
    """Top-level modules that the pack's own code imported since ``before`` from installed
    distributions not in ``allowed``."""
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    outside = {}
    for name in sorted(m for m in sys.modules if "." not in m and m not in before):
        if not watch.importer.get(name, "").startswith(pack_name):
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(name, [])}
        if dists and not dists & allowed:
            outside[name] = sorted(dists)
    return outside


def core_stand_ins(workflow, input_dir: Path) -> dict:
    """Core nodes the workflows use, standing in outside ComfyUI: LoadImage as `comboverse
    run-workflow` runs it (``workflow``: the pack's comboverse_ops.app.workflow). The core inpainting
    chain between Inpaint Prepare and Inpaint Finish passes the pixels through unchanged: it is
    ComfyUI's own code, not the pack's, and runs for real in tests/test_comfyui_real.py."""
    return {
        **workflow.core_nodes(input_dir),
        "CheckpointLoaderSimple": lambda ckpt_name: (None, None, None),
        "CLIPTextEncode": lambda text, clip: (None,),
        "InpaintModelConditioning": lambda positive, negative, vae, pixels, mask, noise_mask=True:
            (positive, negative, {"pixels": pixels}),
        "KSampler": lambda model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                           denoise=1.0: (latent_image,),
        "VAEDecode": lambda samples, vae: (samples["pixels"],),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    forget_the_checkout()
    before = set(sys.modules)
    watch = ImportWatch()
    sys.meta_path.insert(0, watch)
    import os

    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    runner = _load_file_module("workflow_runner", spec["runner"])
    pack = load_pack_folder(Path(spec["pack"]))
    core = core_stand_ins(runner.workflow_module(pack), Path(os.environ["COMBOVERSE_INPUT_DIR"]))
    report = {"pack_module": pack.__name__, "workflows": {}, "nodes_run": []}
    for path in spec["workflows"]:
        prompt = json.loads(Path(path).read_text())
        changed = set()
        for node in prompt.values():
            for name, value in spec["model_files"].get(node["class_type"], {}).items():
                if name in node["inputs"]:
                    node["inputs"][name] = value
                    changed.add((node["class_type"], name))
            if node["class_type"] == "ComboVerseSegment" and not node["inputs"].get("boxes_text", "").strip() \
                    and "sam" in node["inputs"] and "masks" not in node["inputs"] and "boxes" not in node["inputs"]:
                node["inputs"]["boxes_text"] = json.dumps(spec["boxes"][:node["inputs"]["auto_objects"]])
                changed.add(("ComboVerseSegment", "boxes_text"))
        t0 = time.perf_counter()
        # Each node's start time, on stdout (shown when the test fails or runs with -s).
        results = runner.run_api_workflow(pack, prompt, core=core, log=lambda line, t0=t0: print(
            f"as_installed: {Path(path).stem} {time.perf_counter() - t0:7.1f} s {line}", flush=True))
        glbs = [str(results[k][1]) for k, n in prompt.items() if n["class_type"] == "ComboVerseExportMesh"]
        report["workflows"][Path(path).stem] = {"glbs": glbs, "changed": sorted(map(list, changed))}
        report["nodes_run"] += [n["class_type"] for n in prompt.values()]
        print(f"as_installed: {Path(path).name}: ran in {time.perf_counter() - t0:.1f} s, wrote {glbs}", flush=True)
    report["nodes_run"] = sorted(set(report["nodes_run"]))
    report["comboverse_ops_importable"] = importlib.util.find_spec(PACKAGE) is not None
    # What ComfyUI-Manager installs: requirements.txt, besides the torch and torchvision ComfyUI has.
    lines = (Path(spec["pack"]) / "requirements.txt").read_text().splitlines()
    requirements = [line.split("#")[0] for line in lines if line.split("#")[0].strip()]
    report["imported_outside_requirements"] = imported_outside(
        installed_closure(requirements + ["torch", "torchvision"]), before, watch, pack.__name__)
    Path(argv[2]).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
