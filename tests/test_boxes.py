"""ComboVerse Boxes: what the box editor writes becomes core BOUNDING_BOX with phrases for Segment.
The editor itself runs in the real frontend: tests/test_box_editor_browser.py."""

import json
import shutil
import subprocess

import pytest
import torch

from conftest import ROOT, load_pack
from tiny_models import node_class

DRAWN = [{"x": 4.5, "y": 8, "width": 20, "height": 30, "label": "a red cube"},
         {"x": 30, "y": 10, "width": 25, "height": 25, "label": "a blue ball"}]


def test_drawn_boxes_become_labelled_core_boxes_and_phrases(pack):
    boxes, phrases = node_class(pack, "boxes", "Boxes")().boxes(torch.rand(1, 48, 64, 3), json.dumps(DRAWN))
    assert boxes == [[{k: float(v) if k != "label" else v for k, v in b.items()} for b in DRAWN]]
    assert phrases == "a red cube\na blue ball"
    # Segment takes the phrases from the boxes (masks from elsewhere, so no SAM).
    masks = torch.zeros(2, 48, 64)
    masks[0, 10:30, 6:20] = 1
    masks[1, 12:30, 32:50] = 1
    _, _, layout, _ = node_class(pack, "segment", "Segment")().segment(
        image=torch.rand(1, 48, 64, 3), negative_points=True, auto_objects=3, crop_size=64, foreground_ratio=0.85,
        background="grey", boxes=boxes, masks=masks)
    assert layout.phrases == ("a red cube", "a blue ball")
    assert layout.boxes.tolist() == [[4.5, 8.0, 24.5, 38.0], [30.0, 10.0, 55.0, 35.0]]


def test_unnamed_boxes_get_empty_phrases_and_bad_input_is_clear(pack):
    node = node_class(pack, "boxes", "Boxes")()
    _, phrases = node.boxes(torch.rand(1, 48, 64, 3), json.dumps([{"x": 1, "y": 1, "width": 5, "height": 5}] * 2))
    assert phrases == "\n"
    with pytest.raises(ValueError, match="no box drawn"):
        node.boxes(torch.rand(1, 48, 64, 3), "[]")
    with pytest.raises(ValueError, match="not valid JSON"):
        node.boxes(torch.rand(1, 48, 64, 3), "[{")
    with pytest.raises(ValueError, match="box 0 .* lies outside"):
        node.boxes(torch.rand(1, 48, 64, 3), json.dumps([{"x": 100, "y": 1, "width": 5, "height": 5}]))


def test_the_pack_ships_its_editor_as_plain_javascript():
    pack = load_pack()
    web = ROOT / pack.WEB_DIRECTORY
    script = web / "comboverse_boxes.js"
    text = script.read_text()
    assert "app.registerExtension" in text and '"ComboVerseBoxes"' in text and '"ComboVerseSegment"' in text
    assert "ComboVerseBoxes" in pack.NODE_CLASS_MAPPINGS
    if shutil.which("node"):
        subprocess.run(["node", "--check", str(script)], check=True)
