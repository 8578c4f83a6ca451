"""The example workflows: every graph and its API form are wired the way the nodes declare, the
API form is the graph's conversion, and the layout-only workflow runs headless (no model files)
and writes a GLB with one node per object.

``workflows/<name>.json`` is the graph (UI) format as ComfyUI's frontend saves it, with a
thumbnail ``workflows/<name>.jpg``: ComfyUI's template browser lists ``custom_nodes/<pack>/workflows/*.json``
and loads ``<name>.jpg`` next to it. ``workflows/api/<name>.json`` is the same workflow in API format
(the frontend's ``graphToPrompt()`` output), in a subfolder so the template browser does not list it.
Both are written by ``tools/workflow_screenshots.mjs`` from the real frontend.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import ROOT, api_order, run_api_workflow

GRAPH_DIR = ROOT / "workflows"
API_DIR = GRAPH_DIR / "api"
SCREENSHOT_DIR = ROOT / "docs" / "screenshots"
GRAPH_FILES = sorted(GRAPH_DIR.glob("*.json"))
API_FILES = sorted(API_DIR.glob("*.json"))
EXPECTED = {"full_pipeline", "external_3d", "external_inpainting", "layout_only", "layout_from_meshes"}
# ComfyUI serves only the first of these folders that exists (app/custom_node_manager.py): any
# other one in the repo would hide workflows/ from the template browser.
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
EXAMPLE_PICTURE = "comboverse_example.png"  # shipped in workflows/; the workflows' Load Image names it
# Layout: LiteGraph's node title bar and a group's title bar (font 24) in graph units; the view a
# workflow opens at puts the graph's top-left corner OPEN_AT pixels into the canvas (clear of the
# menus whether the canvas lies under them, as in frontend 1.58.1, or beside them), which in a
# 1600 x 900 window at the frontend's default settings (1.27.10: side bar 64 px, menu bar and
# workflow tabs 80 px) is CANVAS_1600x900 pixels (tools/workflow_screenshots.mjs).
NODE_TITLE, GROUP_TITLE = 30, 34
OPEN_AT = (72, 92)
CANVAS_1600x900 = (1600 - 64, 900 - 80)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FILES = "<files>"  # a combo whose options are a file list: any string is accepted
SEED_NAMES = {"seed", "noise_seed"}  # the frontend adds a "control_after_generate" value after these
SEED_CONTROL = {"fixed", "increment", "decrement", "randomize"}
_SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
             "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
             "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
             "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
             "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
             "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
             "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
               "linear_quadratic", "kl_optimal"]

# The core nodes the workflows use, as ComfyUI 0.3.64 (frontend 1.27.10) lists them in /object_info,
# written in INPUT_TYPES form: {"required": {...}, "optional": {...}}, plus outputs as (name, type).
# tests/test_comfyui_real.py checks this table against a running ComfyUI's /object_info.
# "frontend_widgets": widgets the frontend adds after the declared ones (they appear in the graph's
# inputs and widgets_values; "api": whether graphToPrompt() sends their value, which the server ignores).
# "Note" is a frontend-only node (never sent to the server): one multiline text widget, no sockets.
CORE_NODES = {
    "LoadImage": {
        "inputs": {"required": {"image": (FILES, {"image_upload": True})}},
        "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
        "frontend_widgets": [("upload", "IMAGEUPLOAD", False)],
    },
    "Preview3D": {  # bg_image: ComfyUI after 0.3.64 (2026); model_file there also takes a FILE_3D
        "inputs": {"required": {"model_file": ("STRING", {"default": "", "multiline": False})},
                   "optional": {"camera_info": ("LOAD3D_CAMERA", {}), "bg_image": ("IMAGE", {})}},
        "outputs": [],
        "frontend_widgets": [("image", "PREVIEW_3D", True)],  # the 3D viewer
    },
    "PreviewImage": {
        "inputs": {"required": {"images": ("IMAGE", {})}},
        "outputs": [],
    },
    "Note": {
        "inputs": {"required": {"text": ("STRING", {"multiline": True, "default": ""})}},
        "outputs": [],
    },
    "CheckpointLoaderSimple": {
        "inputs": {"required": {"ckpt_name": (FILES, {})}},
        "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    },
    "CLIPTextEncode": {
        "inputs": {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                                "clip": ("CLIP", {})}},
        "outputs": [("CONDITIONING", "CONDITIONING")],
    },
    "KSampler": {
        "inputs": {"required": {
            "model": ("MODEL", {}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (_SAMPLERS, {}),
            "scheduler": (_SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }},
        "outputs": [("LATENT", "LATENT")],
    },
    "VAEEncodeForInpaint": {
        "inputs": {"required": {"pixels": ("IMAGE", {}), "vae": ("VAE", {}), "mask": ("MASK", {}),
                                "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}},
        "outputs": [("LATENT", "LATENT")],
    },
    "InpaintModelConditioning": {  # noise_mask was added in 2024
        "inputs": {"required": {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}),
                                "vae": ("VAE", {}), "pixels": ("IMAGE", {}), "mask": ("MASK", {}),
                                "noise_mask": ("BOOLEAN", {"default": True})}},
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
    },
    "VAEDecode": {
        "inputs": {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}},
        "outputs": [("IMAGE", "IMAGE")],
    },
}

# Loader combos of the pack list model files (empty here: no ComfyUI model folders): accept any string.
PACK_FILE_COMBOS = {("ComboVerseLoadSAM", "sam_name"), ("ComboVerseLoadInpaintModel", "ckpt_name"),
                    ("ComboVerseLoadLift3DModel", "ckpt_name"), ("ComboVerseLoadGuidanceModel", "ckpt_name")}


# --------------------------------------------------------------------------------------------
# Node definitions in one form: inputs [(name, type, options, required, is_widget)], outputs [(name, type)]
# --------------------------------------------------------------------------------------------

def _spec_type(spec):
    t = spec[0]
    if isinstance(t, (list, tuple)):
        return "COMBO", list(t)
    if t == "COMBO":
        return "COMBO", list(spec[1].get("options", []))
    if t == FILES:
        return "COMBO", FILES
    return t, None


def _definition(input_types: dict, outputs: list, node_type: str, frontend_widgets=()):
    inputs = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            t, options = _spec_type(spec)
            opts = dict(spec[1]) if len(spec) > 1 else {}
            if (node_type, name) in PACK_FILE_COMBOS:
                options = FILES
            if options is not None:
                opts["options"] = options
            widget = t in WIDGET_TYPES and not opts.get("forceInput")
            inputs.append({"name": name, "type": t, "opts": opts, "required": section == "required",
                           "widget": widget})
    for name, t, in_api in frontend_widgets:
        inputs.append({"name": name, "type": t, "opts": {}, "required": False, "widget": True, "frontend": True,
                       "api": in_api})
    return {"inputs": inputs, "outputs": outputs}


@pytest.fixture(scope="module")
def definitions(pack):
    defs = {}
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        defs[key] = _definition(cls.INPUT_TYPES(), list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES)), key)
    for key, core in CORE_NODES.items():
        assert key not in defs
        defs[key] = _definition(core["inputs"], core["outputs"], key, core.get("frontend_widgets", ()))
    return defs


def _types_match(a: str, b: str) -> bool:
    """ComfyUI's rule: equal, a wildcard, or comma-separated unions that share a type."""
    return a == b or "*" in (a, b) or bool(set(a.split(",")) & set(b.split(",")))


def _check_widget_value(where: str, inp: dict, value):
    t, opts = inp["type"], inp["opts"]
    if inp.get("frontend"):
        assert isinstance(value, str), f"{where}: frontend widget value {value!r} is not a string"
    elif t == "COMBO":
        assert isinstance(value, str), f"{where}: combo value {value!r} is not a string"
        if opts["options"] != FILES:
            assert value in opts["options"], f"{where}: {value!r} not in {opts['options']}"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif t == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif t in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        if t == "INT":
            assert float(value).is_integer(), f"{where}: {value!r} is not an integer"
        assert math.isfinite(value), f"{where}: {value!r}"
        if "min" in opts:
            assert value >= opts["min"], f"{where}: {value} < min {opts['min']}"
        if "max" in opts:
            assert value <= opts["max"], f"{where}: {value} > max {opts['max']}"
    else:  # pragma: no cover
        raise AssertionError(f"{where}: unknown widget type {t}")


def _expected_widget_values(definition: dict, node_type: str) -> list[tuple[dict | None, str]]:
    """The widget slots in the frontend's order: widget inputs in INPUT_TYPES order, a
    control_after_generate slot after a seed, then the widgets the frontend adds (LoadImage's
    upload button, Preview3D's viewer)."""
    slots = []
    for inp in definition["inputs"]:
        if not inp["widget"]:
            continue
        slots.append((inp, inp["name"]))
        if inp["type"] == "INT" and (inp["name"] in SEED_NAMES or inp["opts"].get("control_after_generate")):
            slots.append((None, "control_after_generate"))
    return slots


# --------------------------------------------------------------------------------------------
# Graph (UI) format
# --------------------------------------------------------------------------------------------

def _extent(wf: dict) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of every node (title bar included) and every group, in graph units."""
    rects = [_node_rect(n) for n in wf["nodes"]] + [tuple(g["bounding"]) for g in wf["groups"]]
    return (min(r[0] for r in rects), min(r[1] for r in rects), max(r[0] + r[2] for r in rects),
            max(r[1] + r[3] for r in rects))


def _node_rect(node: dict) -> tuple[float, float, float, float]:
    return (node["pos"][0], node["pos"][1] - NODE_TITLE, node["size"][0], node["size"][1] + NODE_TITLE)


def _inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2] \
        and inner[1] + inner[3] <= outer[1] + outer[3]


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_every_workflow_has_both_formats_a_thumbnail_and_a_screenshot():
    from PIL import Image

    assert {p.stem for p in GRAPH_FILES} == EXPECTED
    assert {p.stem for p in API_FILES} == EXPECTED
    for name in EXPECTED:
        # The template browser shows <name>.jpg (always .jpg) on a square card.
        thumb = GRAPH_DIR / f"{name}.jpg"
        assert thumb.stat().st_size < 100_000, thumb
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.size == (512, 512), (thumb, im.format, im.size)
        # The README's picture: the whole graph at the frontend's default zoom (1 pixel per graph
        # unit) with a 24 px margin, as tools/workflow_screenshots.mjs takes it.
        shot = SCREENSHOT_DIR / f"{name}.jpg"
        x0, y0, x1, y1 = _extent(json.loads((GRAPH_DIR / f"{name}.json").read_text()))
        assert shot.stat().st_size < 600_000, shot
        with Image.open(shot) as im:
            assert im.format == "JPEG" and im.size == (math.ceil(x1 - x0) + 48, math.ceil(y1 - y0) + 48), \
                (shot, im.format, im.size)


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda p: p.name)
def test_graph_reads_left_to_right_in_titled_stage_groups_and_opens_legible(path):
    """Each stage is a titled group ("1. ...", "2. ...") left of the next; every node sits inside
    one group under its title; no two nodes overlap; links never run back to an earlier group;
    and the workflow opens at the frontend's default zoom with its first group in a 1600 x 900
    window (the frontend restores the saved view instead of fitting the whole graph, which would
    zoom out until the text is unreadable)."""
    wf = json.loads(path.read_text())
    groups = sorted(wf["groups"], key=lambda g: g["bounding"][0])
    assert len(groups) >= 3, f"{path.name}: {len(groups)} groups"
    for i, g in enumerate(groups, 1):
        assert g["title"].startswith(f"{i}. ") and len(g["title"]) > 4, f"{path.name}: group {i} is {g['title']!r}"
    for a, b in zip(groups, groups[1:]):
        assert a["bounding"][0] + a["bounding"][2] < b["bounding"][0], f"{path.name}: {a['title']} reaches {b['title']}"
        assert a["bounding"][1] == b["bounding"][1], f"{path.name}: groups not in one row"
    group_of = {}
    for node in wf["nodes"]:
        rect = _node_rect(node)
        holders = [i for i, g in enumerate(groups)
                   if _inside(rect, (g["bounding"][0], g["bounding"][1] + GROUP_TITLE, g["bounding"][2],
                                     g["bounding"][3] - GROUP_TITLE))]
        assert len(holders) == 1, f"{path.name}: node {node['id']} ({node['type']}) is in groups {holders}"
        group_of[node["id"]] = holders[0]
    rects = {n["id"]: _node_rect(n) for n in wf["nodes"]}
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert not _overlap(rects[a], rects[b]), f"{path.name}: nodes {a} and {b} overlap"
    for _, src, _, dst, _, _ in wf["links"]:
        assert group_of[src] <= group_of[dst], f"{path.name}: link {src} -> {dst} runs back to an earlier group"

    x0, y0, _, _ = _extent(wf)
    assert wf["extra"]["ds"] == {"scale": 1, "offset": [OPEN_AT[0] - x0, OPEN_AT[1] - y0]}, wf["extra"]
    first = [rects[n] for n, g in group_of.items() if g == 0]
    assert max(r[0] + r[2] for r in first) - x0 + OPEN_AT[0] <= CANVAS_1600x900[0], path.name
    assert max(r[1] + r[3] for r in first) - y0 + OPEN_AT[1] <= CANVAS_1600x900[1], path.name


def test_workflows_that_pick_objects_open_ready_to_run_on_the_shipped_picture():
    """full_pipeline and the two external_* workflows pick the objects with ComboVerse Boxes (the
    box editor) on the picture the pack ships; its boxes fit that picture and each has a phrase."""
    from PIL import Image

    with Image.open(GRAPH_DIR / EXAMPLE_PICTURE) as im:
        width, height = im.size
    for name in ("full_pipeline", "external_3d", "external_inpainting"):
        wf = json.loads((GRAPH_DIR / f"{name}.json").read_text())
        nodes = {n["id"]: n for n in wf["nodes"]}
        links = {l[0]: l for l in wf["links"]}
        [boxes] = [n for n in nodes.values() if n["type"] == "ComboVerseBoxes"]
        [segment] = [n for n in nodes.values() if n["type"] == "ComboVerseSegment"]
        def source(node, name):
            [inp] = [i for i in node["inputs"] if i["name"] == name]
            return nodes[links[inp["link"]][1]] if inp.get("link") is not None else None

        assert source(segment, "boxes") is boxes, name
        assert source(boxes, "image")["type"] == "LoadImage", name
        for n in nodes.values():
            if n["type"] == "LoadImage":
                assert n["widgets_values"][0] == EXAMPLE_PICTURE, name
        drawn = json.loads(boxes["widgets_values"][0])
        assert len(drawn) == 3, name
        for b in drawn:
            assert b["label"].strip(), f"{name}: a box without a phrase"
            assert 0 <= b["x"] and 0 <= b["y"] and b["x"] + b["width"] <= width and b["y"] + b["height"] <= height


def test_only_workflows_is_a_template_folder():
    others = [f for f in TEMPLATE_FOLDERS[:-1] if (ROOT / f).exists()]
    assert not others, f"ComfyUI would serve {others[0]}/ as the pack's templates and hide workflows/"


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda p: p.name)
def test_graph_workflow_is_wired_as_the_nodes_declare(path, definitions):
    wf = json.loads(path.read_text())
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, f"{path.name}: no {key}"
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    links = {l[0]: l for l in wf["links"]}
    assert len(links) == len(wf["links"]), "duplicate link ids"
    assert not links or wf["last_link_id"] >= max(links)

    notes = [n for n in nodes.values() if n["type"] == "Note"]
    assert notes, f"{path.name}: no Note"
    note_lines = [line for n in notes for line in n["widgets_values"][0].splitlines()]
    for n in nodes.values():  # a Note line names each loader's file and the folder it goes in
        folder = {"ComboVerseLoadSAM": "models/sams/", "ComboVerseLoadInpaintModel": "models/checkpoints/",
                  "ComboVerseLoadGuidanceModel": "models/checkpoints/", "ComboVerseLoadLift3DModel": "models/triposr/",
                  "CheckpointLoaderSimple": "models/checkpoints/"}.get(n["type"])
        if folder:
            file = n["widgets_values"][0]
            assert any(file in line and folder in line for line in note_lines), \
                f"{path.name}: no Note line says that {file} goes in {folder}"

    for node in nodes.values():
        where = f"{path.name} node {node['id']} ({node['type']})"
        assert node["type"] in definitions, f"{where}: unknown node type"
        for key in ("pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties"):
            assert key in node, f"{where}: no {key}"
        assert node["mode"] in (0, 2, 4), where
        d = definitions[node["type"]]
        by_name = {i["name"]: i for i in d["inputs"]}

        # sockets: names and types as declared, required ones connected
        connected = {}
        for inp in node["inputs"]:
            decl = by_name.get(inp["name"])
            assert decl is not None, f"{where}: no input {inp['name']}"
            assert _types_match(inp["type"], decl["type"]), f"{where}.{inp['name']}: {inp['type']} vs {decl['type']}"
            if decl["widget"]:
                assert inp.get("widget", {}).get("name") == inp["name"], f"{where}.{inp['name']}: widget input " \
                    "without its widget marker"
            if inp.get("link") is not None:
                connected[inp["name"]] = inp["link"]
        for decl in d["inputs"]:
            if decl["required"] and not decl["widget"]:
                assert decl["name"] in connected, f"{where}: required input {decl['name']} is not connected"

        assert len(node["outputs"]) == len(d["outputs"]), f"{where}: outputs {node['outputs']}"
        for slot, (out, (name, t)) in enumerate(zip(node["outputs"], d["outputs"])):
            assert out["type"] == t and out["name"] == name, f"{where}: output {slot} {out} vs {(name, t)}"
            for link_id in out.get("links") or []:
                assert links[link_id][1] == node["id"] and links[link_id][2] == slot, f"{where}: link {link_id}"

        # widgets: count, order, ranges and options
        values = node.get("widgets_values", [])
        slots = _expected_widget_values(d, node["type"])
        assert len(values) == len(slots), f"{where}: {len(values)} widget values for {[s[1] for s in slots]}"
        for (decl, name), value in zip(slots, values):
            if name == "control_after_generate":
                assert value in SEED_CONTROL, f"{where}: control_after_generate {value!r}"
            else:
                _check_widget_value(f"{where}.{name}", decl, value)

    # links: both ends exist, slots and types agree with the declarations
    for link_id, src, src_slot, dst, dst_slot, t in wf["links"]:
        where = f"{path.name} link {link_id}"
        assert src in nodes and dst in nodes, where
        s, d = nodes[src], nodes[dst]
        decl_out = definitions[s["type"]]["outputs"][src_slot]
        assert s["outputs"][src_slot]["type"] == decl_out[1] == t, f"{where}: {t} vs output {decl_out}"
        assert link_id in (s["outputs"][src_slot].get("links") or []), where
        dst_input = d["inputs"][dst_slot]
        assert dst_input["link"] == link_id, f"{where}: target slot {dst_slot} of node {dst} holds {dst_input}"
        decl_in = {i["name"]: i for i in definitions[d["type"]]["inputs"]}[dst_input["name"]]
        assert not decl_in.get("frontend"), f"{where}: link into the frontend widget {dst_input['name']}"
        assert _types_match(t, decl_in["type"]), f"{where}: {t} into {d['type']}.{dst_input['name']} ({decl_in['type']})"
    for node in nodes.values():
        for inp in node["inputs"]:
            if inp.get("link") is not None:
                assert inp["link"] in links and links[inp["link"]][3] == node["id"], f"{path.name}: dangling {inp}"

    # execution order is a topological order of the links
    order = {n["id"]: n["order"] for n in nodes.values()}
    for _, src, _, dst, _, _ in wf["links"]:
        assert order[src] < order[dst], f"{path.name}: node {src} runs after {dst}"


def test_full_pipeline_has_every_stage(definitions):
    wf = json.loads((GRAPH_DIR / "full_pipeline.json").read_text())
    types = {n["type"] for n in wf["nodes"]}
    stages = {"LoadImage", "ComboVerseBoxes", "ComboVerseLoadSAM", "ComboVerseSegment", "ComboVerseLoadInpaintModel", "ComboVerseInpaint",
              "ComboVerseLoadLift3DModel", "ComboVerseLift3D", "ComboVerseInitPose", "ComboVerseLoadGuidanceModel",
              "ComboVerseSSDSRefine", "ComboVerseExportMesh", "Preview3D"}
    assert stages <= types, stages - types


# --------------------------------------------------------------------------------------------
# API format
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_is_wired_as_the_nodes_declare(path, definitions):
    prompt = json.loads(path.read_text())
    for key, node in prompt.items():
        where = f"{path.name} node {key} ({node['class_type']})"
        assert node["class_type"] in definitions and node["class_type"] != "Note", where
        d = definitions[node["class_type"]]
        by_name = {i["name"]: i for i in d["inputs"]}
        for name, value in node["inputs"].items():
            decl = by_name.get(name)
            assert decl is not None, f"{where}: no input {name}"
            if isinstance(value, list):
                src, slot = value
                assert src in prompt, f"{where}.{name}: no node {src}"
                out_t = definitions[prompt[src]["class_type"]]["outputs"][slot][1]
                assert _types_match(out_t, decl["type"]), f"{where}.{name}: {out_t} into {decl['type']}"
            else:
                assert decl["widget"], f"{where}.{name}: a socket given a value"
                assert decl.get("api", True), f"{where}.{name}: the frontend never sends this widget"
                _check_widget_value(f"{where}.{name}", decl, value)
        for decl in d["inputs"]:
            if decl["required"]:
                assert decl["name"] in node["inputs"], f"{where}: required input {decl['name']} missing"
    api_order(prompt)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_workflow_is_the_graph_converted(name, definitions):
    """What graphToPrompt() makes of the graph: every active node but Notes, each link as
    [source id, output slot], each unlinked widget's value (frontend-only values aside)."""
    graph = json.loads((GRAPH_DIR / f"{name}.json").read_text())
    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    nodes = {n["id"]: n for n in graph["nodes"]}
    active = {str(i): n for i, n in nodes.items() if n["mode"] == 0 and n["type"] != "Note"}
    assert set(prompt) == set(active), f"{name}: API nodes {sorted(prompt)} vs graph {sorted(active)}"
    links = {l[0]: l for l in graph["links"]}
    for key, node in active.items():
        where = f"{name} node {key} ({node['type']})"
        api = prompt[key]
        assert api["class_type"] == node["type"], where
        expected = {}
        for inp in node["inputs"]:
            if inp.get("link") is not None:
                _, src, src_slot, _, _, _ = links[inp["link"]]
                expected[inp["name"]] = [str(src), src_slot]
        slots = _expected_widget_values(definitions[node["type"]], node["type"])
        for (decl, slot_name), value in zip(slots, node.get("widgets_values", [])):
            if decl is None or slot_name in expected or not decl.get("api", True):
                continue
            expected[slot_name] = value
        assert api["inputs"] == expected, f"{where}: {api['inputs']} vs the graph's {expected}"


SMALL = {  # small settings so the headless run takes seconds on a CPU
    "ComboVerseProceduralScene": {"objects": 3, "image_size": 96},
    "ComboVerseSegment": {"crop_size": 64},
    "ComboVerseSSDSRefine": {"steps": 3, "resolution": 32},
}


def test_layout_only_api_workflow_runs_headless_and_writes_one_node_per_object(pack, output_dir, one_thread):
    import trimesh

    prompt = json.loads((API_DIR / "layout_only.json").read_text())
    results = run_api_workflow(pack, prompt, SMALL)

    exports = [k for k, n in prompt.items() if n["class_type"] == "ComboVerseExportMesh"]
    assert len(exports) == 1
    mesh, glb_path = results[exports[0]]
    path = output_dir / glb_path
    assert path.suffix == ".glb" and path.is_file(), glb_path
    scene = trimesh.load(path, force="scene")
    objects = SMALL["ComboVerseProceduralScene"]["objects"]
    assert len(scene.geometry) == objects, list(scene.geometry)
    assert len(scene.graph.nodes_geometry) == objects
    assert mesh.vertices.ndim == 3 and mesh.vertices.shape[0] == 1
    assert torch.isfinite(mesh.vertices).all()
