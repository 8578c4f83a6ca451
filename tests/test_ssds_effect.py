"""The ambiguous benchmark scenes and benchmarks/ssds_effect.py end to end on the CPU with a tiny random prior."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_sd_folder

from comboverse_ops.synthetic.ambiguous import SETS, make_ambiguous_scene, set_scene
from comboverse_ops.compose.relations import RELATIONS

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("ssds_effect", ROOT / "benchmarks" / "ssds_effect.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("index", [0, 1, 3])  # an "on top of" scene, a front/behind one, a 3-object one
def test_set_scenes_break_their_caption_only_where_the_reference_view_cannot_see(index):
    amb = set_scene("tune", index, image_size=48)
    assert all(amb.holds(amb.truth.scene))  # the caption is true of the truth
    assert not all(amb.holds(amb.start))  # ... and false of the start
    assert amb.target in amb.triples and not amb.holds(amb.start)[amb.triples.index(amb.target)]
    assert all(r in RELATIONS for _, r, _ in amb.triples)
    assert len(amb.start.objects) == (3 if index == 3 else 2)
    assert amb.corruption in (("float", "sink") if index % 3 == 0 else ("swap", "depth_size"))
    words = amb.caption.replace(",", " ,").split()
    assert amb.truth.colors[amb.triples[0][0]] in words
    # Every word is one token of the shipped prior's vocabulary (no "box", no colour it never saw).
    vocab = json.loads((ROOT / "comboverse_ops" / "assets" / "spatial_prior" / "tokenizer" / "vocab.json").read_text())
    assert all(w + "</w>" in vocab or w in vocab for w in words), amb.caption
    # The start looks like the reference picture: every object's projected centre stays put.
    from comboverse_ops.types.camera import project_points
    for t, s in zip(amb.truth.scene.objects, amb.start.objects):
        a = project_points(t.world_vertices().detach(), amb.truth.camera)[0][0].mean(0)
        b = project_points(s.world_vertices().detach(), amb.truth.camera)[0][0].mean(0)
        assert (a - b).norm() < 0.15 * 48


def test_sets_differ_and_scenes_repeat():
    a, b = set_scene("tune", 1, image_size=48), set_scene("tune", 1, image_size=48)
    assert a.caption == b.caption and a.seed == b.seed
    assert all((p.translation == q.translation).all() for p, q in zip(a.start.poses, b.start.poses))
    assert set_scene("report", 1, image_size=48).seed != a.seed and SETS["tune"] != SETS["report"]
    with pytest.raises(ValueError, match="corruption must be one of"):
        make_ambiguous_scene(1, corruption="tilt")


def test_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    prior = save_tiny_sd_folder(tmp_path / "prior")
    out = tmp_path / "ssds_effect.md"
    rows = _benchmark().main(["--guidance", str(prior), "--set", "tune", "--scenes", "2", "--steps", "2",
                              "--variants", "ref;ssds+phys;sds-high+phys (ray, depth only, c 3, guided 50%)",
                              "--workers", "0", "--size", "48", "--points", "256",
                              "--probe-steps", "2", "--device", "cpu", "--out", str(out)])
    named = "sds-high+phys (ray, depth only, c 3, guided 50%)"
    assert len(rows) == 8 and {r["variant"] for r in rows} == {"init", "ref", "ssds+phys", named}
    saved = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(saved) == 8
    keys = {"relation", "translation", "translation_aligned", "box3d_iou", "novel_mask_iou", "ref_mask_iou",
            "chamfer", "fscore", "adds"}
    assert all(keys <= set(r) for r in saved)
    assert all(r["relation"] == 0.0 for r in saved if r["variant"] == "init")  # every start breaks its caption
    # Probed at every guided step: both of 2 steps, or the first only when guided 50% of them.
    for variant, probed in (("ssds+phys", 2), (named, 1)):
        guided = [r for r in saved if r["variant"] == variant]
        assert all(len(r["grad_ratio"]) == probed and all(x > 0 for x in r["grad_ratio"]) for r in guided)
    table = out.read_text()
    assert "| ref | 2 |" in table and "no guidance 86.62 / 75.24" in table and "| ssds+phys | 2 |" in table
    assert "relation satisfied" in table and "ADD-S@0.1" in table


def test_variant_names_round_trip_and_bad_options_are_named():
    bench = _benchmark()
    name = "ssds+phys (ray, depth only, 10 views, scale 30, az -30..30, c 3, guided 50%)"
    v = bench.parse_variant(name)
    assert (v.guidance, v.physics, v.ray, v.depth_only, v.views, v.scale, v.azimuth, v.reweight, v.until) == \
        ("ssds", True, True, True, 10, 30.0, (-30.0, 30.0), 3.0, 0.5)
    assert v.name == name
    with pytest.raises(ValueError, match="unknown option 'sideways'"):
        bench.parse_variant("sds (sideways)")
