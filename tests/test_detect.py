"""Objects from text: boxes from other nodes in every core form, and the built-in open-vocabulary
detector (a tiny OWLv2 saved with save_pretrained, loaded offline like a real one).

Random tiny weights give meaningless boxes: these tests check the plumbing (one box per phrase,
each phrase kept with its box through Segment, InitPose and the GLB, clear errors), not detection
quality.
"""

import json

import pytest
import torch

from comboverse_ops.decompose.detect import DetectSettings, detect_phrases, load_detector
from comboverse_ops.types.layout import parse_box_input
from comboverse_ops.models.cache import ModelCache
from test_export import glb_json
from tiny_models import node_class, occluded_pair, save_tiny_depth_anything, save_tiny_owlv2, save_tiny_sam, \
    save_tiny_triposr

pytestmark = pytest.mark.usefixtures("one_thread")

PHRASES = ["a red cube", "a blue ball"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny_owlv2(root / "detectors" / "owlv2-tiny")
    save_tiny_depth_anything(root / "detectors" / "not-a-detector")
    return root


def _image(size=96, seed=0):
    return torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Boxes from other nodes


def test_every_core_box_form_gives_the_same_boxes():
    d = {"x": 10, "y": 20, "width": 30, "height": 40}
    want = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    for value in (d, [d], [[d]], [[{**d, "score": 0.9}]], [[d], [d]]):
        boxes, labels = parse_box_input(value, (100, 100))
        assert torch.equal(boxes, want) and labels is None, value


def test_score_ordered_boxes_keep_their_order_and_labels_bring_phrases():
    found = [[{"x": 50, "y": 0, "width": 10, "height": 10, "score": 0.9, "label": "a ball"},
              {"x": 0, "y": 0, "width": 10, "height": 10, "score": 0.4, "label": "a cube"}]]
    boxes, labels = parse_box_input(found, (64, 64))
    assert boxes[:, 0].tolist() == [50.0, 0.0] and labels == ("a ball", "a cube")


@pytest.mark.parametrize("empty", [[[]], [], [[], []]])
def test_nothing_detected_is_a_clear_error_naming_the_upstream_node(pack, empty):
    prompt = {"7": {"class_type": "ComboVerseSegment", "inputs": {"boxes": ["12", 0]}},
              "12": {"class_type": "SAM3_Detect", "inputs": {}, "_meta": {"title": "SAM3 Detect"}}}
    with pytest.raises(ValueError, match=r"no object was detected: SAM3 Detect \(node #12\) gave no box"):
        node_class(pack, "segment", "Segment")().segment(
            image=_image(64)[None], negative_points=True, auto_objects=3, crop_size=64, foreground_ratio=0.85,
            background="grey", boxes=empty, masks=torch.ones(1, 64, 64), prompt=prompt, unique_id="7")


def test_segment_socket_takes_both_core_box_types(pack):
    spec = node_class(pack, "segment", "Segment").INPUT_TYPES()
    assert set(spec["optional"]["boxes"][0].split(",")) == {"BOUNDING_BOX", "BOUNDING_BOXES"}
    assert spec["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}


# ----------------------------------------------------------------------------------------------
# The built-in detector


def test_one_distinct_box_per_phrase_inside_the_image(models):
    cache = ModelCache()
    det = load_detector(models / "detectors" / "owlv2-tiny", cache=cache)
    assert load_detector(models / "detectors" / "owlv2-tiny", cache=cache) is det and det.model_type == "owlv2"
    found = detect_phrases(det, _image(), PHRASES + ["a green cone"])
    assert found.phrases == tuple(PHRASES + ["a green cone"]) and found.boxes.shape == (3, 4)
    assert len({tuple(b) for b in found.boxes.tolist()}) == 3  # no two phrases share a box
    assert (found.boxes[:, 2:] > found.boxes[:, :2]).all()
    assert float(found.boxes.min()) >= 0 and float(found.boxes.max()) <= 96
    assert ((0 < found.scores) & (found.scores < 1)).all()


def test_detector_errors_name_the_phrase_or_the_folder(models):
    det = load_detector(models / "detectors" / "owlv2-tiny")
    with pytest.raises(ValueError, match="no object matching 'a red cube' was found.*threshold 0.99"):
        detect_phrases(det, _image(), PHRASES, DetectSettings(threshold=0.99))
    with pytest.raises(ValueError, match="one non-empty phrase"):
        detect_phrases(det, _image(), [])
    with pytest.raises(ValueError, match="type 'depth_anything', expected one of .*owlv2"):
        load_detector(models / "detectors" / "not-a-detector")
    with pytest.raises(FileNotFoundError, match="does not exist.*owlv2"):
        load_detector(models / "detectors" / "missing")


def test_detect_node_boxes_carry_their_phrases_through_segment(pack, models, monkeypatch):
    monkeypatch.setenv("COMBOVERSE_MODELS_DIR", str(models))
    loader = node_class(pack, "detect", "LoadDetector")
    assert loader.INPUT_TYPES()["required"]["model_folder"][0] == ["not-a-detector", "owlv2-tiny"]
    (det,) = loader().load("owlv2-tiny")
    image = _image()[None]
    boxes, phrases = node_class(pack, "detect", "Detect")().detect(det, image, "a red cube\n\na blue ball\n", 0.1)
    assert phrases == "a red cube\na blue ball"
    assert len(boxes) == 1 and [b["label"] for b in boxes[0]] == PHRASES
    assert all({"x", "y", "width", "height", "score"} <= set(b) for b in boxes[0])
    # Segment (masks from elsewhere, so no SAM) takes the phrases from the boxes.
    masks = torch.zeros(2, 96, 96)
    for i, b in enumerate(boxes[0]):
        masks[i, int(b["y"]) + 1:int(b["y"] + b["height"]) - 1, int(b["x"]) + 1:int(b["x"] + b["width"]) - 1] = 1
    _, _, layout, _ = node_class(pack, "segment", "Segment")().segment(
        image=image, negative_points=True, auto_objects=3, crop_size=64, foreground_ratio=0.85, background="grey",
        boxes=boxes, masks=masks)
    assert layout.phrases == tuple(PHRASES)
    want = torch.tensor([[b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]] for b in boxes[0]])
    torch.testing.assert_close(layout.boxes, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="phrases is empty"):
        node_class(pack, "detect", "Detect")().detect(det, image, "  \n", 0.1)


def test_cli_run_with_phrases_and_a_detector_writes_one_node_per_phrase(models, tmp_path):
    from comboverse_ops.meshio.atomic import save_png_atomic
    from comboverse_ops.app.cli import main

    save_tiny_sam(tmp_path / "models" / "sams" / "sam_tiny.pth")
    save_tiny_triposr(tmp_path / "models" / "triposr")
    _, obs = occluded_pair()
    image = save_png_atomic(tmp_path / "picture.png", obs.image)
    out = tmp_path / "out" / "scene.glb"
    assert main(["run", str(image), "--phrases", *PHRASES, "--detect", str(models / "detectors" / "owlv2-tiny"),
                 "--models", str(tmp_path / "models"), "--out", str(out), "--no-inpaint", "--mc-resolution", "24",
                 "--density-threshold", "0.5", "--max-faces", "400", "--steps", "2", "--refine-resolution", "48",
                 "--preview-size", "48", "--device", "cpu"]) == 0
    report = json.loads((out.parent / "scene_report.json").read_text())
    assert [o["phrase"] for o in report["objects"]] == PHRASES
    assert report["models"]["detect"]["kind"].startswith("owlv2")
    gltf = glb_json(out.read_bytes())
    extras = [n["extras"] for n in gltf["nodes"]]
    assert [e["phrase"] for e in extras] == PHRASES  # one glTF node per phrase
    torch.testing.assert_close(torch.tensor([e["box_xyxy"] for e in extras]),
                               torch.tensor([o["box"] for o in report["objects"]]))
    assert gltf["asset"]["extras"]["comboverse"]["settings"]["detect"] == str(models / "detectors" / "owlv2-tiny")


def test_cli_run_without_boxes_or_detector_says_what_to_give(tmp_path):
    from comboverse_ops.app.pipeline import PipelineSettings, run_pipeline

    save_tiny_sam(tmp_path / "models" / "sams" / "sam_tiny.pth")
    save_tiny_triposr(tmp_path / "models" / "triposr")
    with pytest.raises(ValueError, match="--boxes: not given.*--detect DIR"):
        run_pipeline(tmp_path / "x.png", None, tmp_path / "scene.glb",
                     PipelineSettings(models_dir=str(tmp_path / "models"), no_inpaint=True))
