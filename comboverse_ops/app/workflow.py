"""Running an API-format workflow of this pack headless, through the pack's own node classes.

    comboverse run-workflow FILE.json [--models DIR] [--input DIR] [--out DIR]

A shared workflow then gives outside ComfyUI what it gives inside: the same node classes run
the same code on the same widget values. What ComfyUI's executor does for them is done here:
nodes run in dependency order (each after the nodes its links point at), links
``[source id, output slot]`` are resolved to those outputs, hidden inputs are filled in
(``PROMPT``: the workflow, ``UNIQUE_ID``: the node's id, ``EXTRA_PNGINFO``: None, as for a
workflow queued through ComfyUI's API without its graph), and every node runs under
``torch.inference_mode()``. Before anything runs, the whole workflow is checked and every problem
is reported in one error: node classes that are neither the pack's nor a core node this runner
can stand in for (named by node id and class type), links to missing nodes or outputs,
required inputs without a value, cycles, and each node's ``VALIDATE_INPUTS`` (the loaders check
their model files there, so a missing checkpoint is named before the first model loads).
Widget values are not checked against the ranges and choices the frontend shows; the nodes
check what they use.

Core nodes: ``LoadImage`` reads a picture from the input folder as ComfyUI's does (RGB in
[0, 1], MASK = 1 - alpha, a 64x64 zero mask without alpha; EXIF orientation applied; the first
frame only; pictures of more than 8 bits per channel are read at full precision, where
ComfyUI's clips them); ``PreviewImage`` and ``Preview3D`` only display and are skipped. Any
other core node (an SD sampler chain, SaveGLB, ...) is an error naming it: run such workflows in
ComfyUI.

Folders: ComfyUI's models, input and output folders become the folders given here (the
``$COMBOVERSE_MODELS_DIR``, ``$COMBOVERSE_INPUT_DIR`` and ``$COMBOVERSE_OUTPUT_DIR`` that the node
layer reads outside ComfyUI, nodes/host.py), so ``models/sams/...`` is ``MODELS/sams/...`` and
ExportMesh's ``comboverse/scene`` prefix writes ``OUT/comboverse/scene_00001_.glb``.

The node classes come from the pack folder this package sits in (a clone, or the copy in
ComfyUI's ``custom_nodes``), loaded the way ComfyUI loads it: the node layer is never imported by
name, and nothing here imports ComfyUI. A ``pip install`` that is not editable installs only this
package, without the node classes; :func:`pack_folder` then says so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable, Mapping

import torch

__all__ = ["DISPLAY_ONLY", "WorkflowError", "check_workflow", "core_nodes", "execution_order", "load_node_classes",
           "pack_folder", "read_workflow", "run_workflow", "written_files", "host_folders"]

logger = logging.getLogger(__name__)

DISPLAY_ONLY = frozenset({"PreviewImage", "Preview3D"})  # core nodes that only show a result
# How the node layer finds its folders outside ComfyUI (nodes/host.py).
FOLDER_VARIABLES = {"models": "COMBOVERSE_MODELS_DIR", "input": "COMBOVERSE_INPUT_DIR",
                    "output": "COMBOVERSE_OUTPUT_DIR"}


class WorkflowError(ValueError):
    """A workflow that cannot run here; the message names every node and input at fault."""


def read_workflow(path: str | os.PathLike) -> dict:
    """An API-format workflow file as ``{node id: {"class_type": str, "inputs": {...}}}``.

    Raises:
        FileNotFoundError: no file at ``path``.
        WorkflowError: not JSON, a graph (UI-format) workflow, or not a dict of nodes.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"workflow: no file at {p}")
    try:
        prompt = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"workflow: {p} is not JSON ({e})") from None
    if isinstance(prompt, dict) and "nodes" in prompt and "links" in prompt:
        raise WorkflowError(f"workflow: {p} is a graph (UI-format) workflow; expected the API format: in ComfyUI "
                            "use Workflow > Export (API), or take workflows/api/<name>.json of the pack")
    if not isinstance(prompt, dict) or not prompt or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs"), dict)
            for n in prompt.values()):
        raise WorkflowError(f"workflow: {p}: expected an API-format workflow, {{node id: {{\"class_type\": ..., "
                            "\"inputs\": {...}}}}, got something else")
    return prompt


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def execution_order(prompt: Mapping[str, dict]) -> list[str]:
    """The workflow's node ids in an order where every node comes after the nodes it links to
    (ties in id order, so the order is the same on every run).

    Raises:
        WorkflowError: a link to a node that is not in the workflow, or a cycle (naming its nodes).
    """
    deps = defaultdict(set)
    for key, node in prompt.items():
        for name, value in node["inputs"].items():
            if _is_link(value):
                if value[0] not in prompt:
                    raise WorkflowError(f"workflow: node {key} ({node['class_type']}) input '{name}' links to node "
                                        f"{value[0]}, which is not in the workflow")
                deps[key].add(value[0])
    waiting = {k: len(deps[k]) for k in prompt}
    users = defaultdict(list)
    for k, ds in deps.items():
        for d in ds:
            users[d].append(k)
    ready = deque(sorted((k for k, n in waiting.items() if n == 0), key=_id_key))
    order = []
    while ready:
        k = ready.popleft()
        order.append(k)
        for u in sorted(users[k], key=_id_key):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(prompt):
        stuck = sorted(set(prompt) - set(order), key=_id_key)
        raise WorkflowError(f"workflow: nodes {stuck} depend on each other in a cycle; a workflow must be acyclic")
    return order


def _id_key(key: str):
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def _declared_inputs(cls) -> tuple[dict, dict, dict]:
    """``(required, optional, hidden)`` of a node class's ``INPUT_TYPES()``."""
    types = cls.INPUT_TYPES()
    return types.get("required", {}), types.get("optional", {}), types.get("hidden", {})


def check_workflow(prompt: Mapping[str, dict], node_classes: Mapping[str, type],
                   core: Mapping[str, Callable] | None = None) -> list[str]:
    """Check everything that can be checked before a node runs; return the execution order.

    ``node_classes``: the pack's ``NODE_CLASS_MAPPINGS``. ``core``: core nodes this runner stands
    in for, ``{class_type: function(**inputs) -> outputs tuple}`` (:func:`core_nodes`).

    Raises:
        WorkflowError: listing every node this runner cannot run (``node 6 (KSampler)``), every
            link to a missing output, every required input without a value, and every
            ``VALIDATE_INPUTS`` message, each with its node id and class type.
    """
    core = core or {}
    order = execution_order(prompt)
    unknown = [f"node {k} ({n['class_type']})" for k, n in sorted(prompt.items(), key=lambda kv: _id_key(kv[0]))
               if n["class_type"] not in node_classes and n["class_type"] not in core
               and n["class_type"] not in DISPLAY_ONLY]
    if unknown:
        runnable = sorted(core) + sorted(DISPLAY_ONLY)
        raise WorkflowError(f"workflow: {len(unknown)} node(s) are not ComboVerse nodes and cannot run outside "
                            f"ComfyUI: {', '.join(unknown)}; of ComfyUI's core nodes only {', '.join(runnable)} run "
                            "here. Run this workflow in ComfyUI, or replace those nodes with ComboVerse ones")
    problems = []
    for key in order:
        node = prompt[key]
        kind, inputs = node["class_type"], node["inputs"]
        where = f"node {key} ({kind})"
        for name, value in inputs.items():
            if _is_link(value):
                source_kind = prompt[value[0]]["class_type"]
                source_cls = node_classes.get(source_kind)
                n_outputs = len(source_cls.RETURN_TYPES) if source_cls is not None else None
                if n_outputs is not None and not 0 <= value[1] < n_outputs:
                    problems.append(f"{where} input '{name}' takes output {value[1]} of node {value[0]} "
                                    f"({source_kind}), which has {n_outputs} outputs")
        cls = node_classes.get(kind)
        if cls is None:
            continue
        required, optional, _ = _declared_inputs(cls)
        missing = [name for name in required if name not in inputs]
        if missing:
            problems.append(f"{where}: required input(s) {missing} have no value or link")
        unknown_inputs = [name for name in inputs if name not in required and name not in optional]
        if unknown_inputs:  # ComfyUI ignores them too; say so, since the node then takes its own value
            logger.warning("%s: input(s) %s are not inputs of %s (a workflow from another version of the pack?) "
                           "and are ignored, as ComfyUI ignores them", where, unknown_inputs, kind)
        validate = getattr(cls, "VALIDATE_INPUTS", None)
        if validate is not None:
            # As ComfyUI: the widget values (not the links) the function's signature names.
            params = inspect.signature(validate).parameters
            values = {n: v for n, v in inputs.items() if not _is_link(v) and n in params}
            answer = validate(**values)
            if answer is not True:
                problems.append(f"{where}: {answer}")
    if problems:
        raise WorkflowError("workflow: " + "; ".join(problems))
    return order


def run_workflow(prompt: Mapping[str, dict], node_classes: Mapping[str, type],
                 core: Mapping[str, Callable] | None = None, extra_pnginfo: dict | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Check ``prompt`` (:func:`check_workflow`), then run every node once in dependency order.

    Returns:
        ``(outputs, ui)``: each node's outputs tuple by id (display-only core nodes have none),
        and each node's UI output by id (what ComfyUI would show: ExportMesh's
        ``{"3d": [{"filename", "subfolder", "type": "output"}]}``), for nodes that give one.

    Raises:
        WorkflowError: see :func:`check_workflow`; nothing has run then.
        ValueError, FileNotFoundError: a node refused its input at run time; the message starts
            with the node id and class type.
    """
    core = core or {}
    order = check_workflow(prompt, node_classes, core)
    outputs, ui = {}, {}
    for i, key in enumerate(order, 1):
        node = prompt[key]
        kind = node["class_type"]
        if kind in DISPLAY_ONLY and kind not in core:
            continue
        kwargs = {name: outputs[v[0]][v[1]] if _is_link(v) else v for name, v in node["inputs"].items()}
        if kind in node_classes:  # only declared inputs reach the node, as in ComfyUI
            required, optional, hidden = _declared_inputs(node_classes[kind])
            kwargs = {n: v for n, v in kwargs.items() if n in required or n in optional}
            for name, what in hidden.items():
                kwargs[name] = {"PROMPT": prompt, "UNIQUE_ID": key, "EXTRA_PNGINFO": extra_pnginfo}.get(what)
        if log is not None:
            log(f"[{i}/{len(order)}] node {key} ({kind})")
        try:
            with torch.inference_mode():
                if kind in core:
                    out = core[kind](**kwargs)
                else:
                    cls = node_classes[kind]
                    out = getattr(cls(), cls.FUNCTION)(**kwargs)
        except (ValueError, FileNotFoundError) as e:
            raise _named(e, f"node {key} ({kind})") from e
        if isinstance(out, dict):
            if out.get("ui") is not None:
                ui[key] = out["ui"]
            out = out.get("result", ())
        out = tuple(out)
        expected = len(node_classes[kind].RETURN_TYPES) if kind in node_classes else None
        if expected is not None and len(out) != expected:
            raise RuntimeError(f"node {key} ({kind}) returned {len(out)} outputs; its class declares {expected}")
        outputs[key] = out
    return outputs, ui


def _named(error: Exception, where: str) -> Exception:
    """``error`` again, its message starting with ``where`` (the same class where it can be made
    from a message, else its ValueError / FileNotFoundError base)."""
    message = f"{where}: {error}"
    try:
        return type(error)(message)
    except TypeError:
        return (FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError)(message)


def written_files(ui: Mapping[str, dict], output_dir: str | os.PathLike) -> list[Path]:
    """The files the nodes' UI outputs name in the output folder (``"type": "output"``), in node order."""
    files = []
    for key in sorted(ui, key=_id_key):
        for entries in ui[key].values():
            for e in entries if isinstance(entries, list) else []:
                if isinstance(e, dict) and e.get("type") == "output" and e.get("filename"):
                    files.append(Path(output_dir) / (e.get("subfolder") or "") / e["filename"])
    return files


# ----------------------------------------------------------------------------------------------
# Core nodes, folders, the pack's node classes

def core_nodes(input_dir: str | os.PathLike) -> dict[str, Callable]:
    """The core nodes this runner stands in for: ``{"LoadImage": function(image) -> (IMAGE, MASK)}``
    reading ``image`` (a name in ``input_dir``, a ``sub/name``, or an absolute path; ComfyUI's
    ``" [input]"`` annotation allowed) as ComfyUI's LoadImage does (module docstring)."""
    folder = Path(input_dir)

    def load_image(image: str):
        from ..types.images import load_image_hwc

        name = image[:-len(" [input]")] if image.endswith(" [input]") else image
        path = Path(name)
        if not path.is_absolute():
            path = folder / path
        if not path.is_file():
            raise FileNotFoundError(f"LoadImage: picture {image!r} not found at {path}; put it into the input folder "
                                    f"{folder} (--input)")
        hwc = load_image_hwc(path, what=f"LoadImage {image!r}")
        rgb = hwc[None, ..., :3].contiguous()
        mask = 1.0 - hwc[None, ..., 3] if hwc.shape[-1] == 4 else torch.zeros(1, 64, 64)
        return rgb, mask

    return {"LoadImage": load_image}


@contextlib.contextmanager
def host_folders(models: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike):
    """Point the node layer's models, input and output folders at these while the block runs
    (:data:`FOLDER_VARIABLES`); the environment is restored afterwards."""
    given = {"models": models, "input": input, "output": output}
    saved = {v: os.environ.get(v) for v in FOLDER_VARIABLES.values()}
    try:
        for what, variable in FOLDER_VARIABLES.items():
            os.environ[variable] = str(Path(given[what]).resolve())
        yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def pack_folder() -> Path:
    """The pack folder holding this package and the node classes (``__init__.py``, ``nodes/``).

    Raises:
        FileNotFoundError: this package was installed on its own (``pip install .``), without the
            node classes, saying where to run the command instead.
    """
    folder = Path(__file__).resolve().parents[2]
    if not ((folder / "__init__.py").is_file() and (folder / "nodes" / "__init__.py").is_file()):
        raise FileNotFoundError(
            f"run-workflow: the pack's node classes (nodes/ and __init__.py) are not next to {Path(__file__).parents[1]}: "
            "a plain `pip install .` installs only the core. Run the command from the pack folder (a clone or "
            "ComfyUI's custom_nodes/<pack>) as `python -m comboverse_ops.app.cli run-workflow ...`, or install the "
            "clone editable (pip install -e .)")
    return folder


def load_node_classes(folder: str | os.PathLike | None = None) -> dict[str, type]:
    """``NODE_CLASS_MAPPINGS`` of the pack in ``folder`` (default :func:`pack_folder`), loaded as
    ComfyUI loads a folder in ``custom_nodes``: its ``__init__.py`` as a package named after the
    folder's path. Loaded once per folder and process."""
    folder = Path(folder).resolve() if folder is not None else pack_folder()
    name = str(folder).replace(".", "_x_")
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return dict(module.NODE_CLASS_MAPPINGS)
