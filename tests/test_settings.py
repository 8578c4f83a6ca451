"""One settings tree (issue 13): `comboverse run --help` lists every stage setting with its default,
presets apply and flags override them, old flag names keep working, and every setting says where
its default comes from."""

import re

import pytest


def _leaves():
    from comboverse_ops.app.presets import StageSettings
    from comboverse_ops.settings import get_path, leaf_fields

    d = StageSettings()
    for path, owner, f in leaf_fields(StageSettings):
        yield path, f, get_path(d, path)


def _help_entries(text: str) -> dict[str, str]:
    """``{flag: its help entry, whitespace collapsed}`` of an argparse ``--help`` text."""
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            for flag in re.findall(r"(--[\w-]+)", line.split("  ")[1] if "  " in line.strip() else line):
                entries[flag] = current
        elif current is not None and line.startswith("      "):
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def test_run_help_lists_every_setting_of_every_stage_with_its_default(capsys):
    from comboverse_ops.app.cli import main
    from comboverse_ops.settings import describe_default, flag_name

    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    listed = 0
    for path, f, value in _leaves():
        if not f.metadata.get("flag", True):
            continue  # the run sets it: --seed (Inpaint's and SSDS's seeds), --prompt (SSDS's)
        entry = entries[flag_name(path)]
        assert f"(default: {describe_default(value)}; {f.metadata['source']})" in entry, (path, entry)
        listed += 1
    assert listed >= 60
    for run_flag, default in (("--seed", "0"), ("--preview-size", "256"), ("--preset", "default")):
        assert f"(default: {default})" in entries[run_flag], entries[run_flag]


def test_every_setting_has_help_and_a_source():
    from comboverse_ops.settings import SOURCES

    for path, f, _ in _leaves():
        assert f.metadata.get("help"), path
        assert f.metadata.get("source") in SOURCES, path


def test_presets_apply_and_flags_given_override_them():
    from comboverse_ops.app.cli import run_settings
    from comboverse_ops.app.presets import PRESETS, apply_preset

    base = ["pic.png", "--boxes", "[[0, 0, 4, 4]]"]
    default = run_settings(base).stages
    assert default == apply_preset("default")
    paper = run_settings(base + ["--preset", "paper"]).stages
    # the paper's values: 10 views, every step guided, c = 25, t in [0.8, 0.9], no terms beyond it
    assert paper.ssds.views == 10 and paper.refine.guidance_until == 1.0
    assert paper.ssds.reweight == 25.0 and paper.ssds.t_range == (0.8, 0.9)
    assert paper.refine.weights.penetration == paper.refine.weights.support == 0.0
    assert paper.refine.lr_rotation == 0.001 and default.refine.lr_rotation != 0.001
    # a flag given wins over the preset; the rest of the preset stays
    mixed = run_settings(base + ["--preset", "paper", "--ssds-views", "6", "--refine-weights-support", "5"]).stages
    assert mixed.ssds.views == 6 and mixed.refine.weights.support == 5.0 and mixed.refine.lr_rotation == 0.001
    fast = run_settings(base + ["--preset", "fast"]).stages
    assert fast.refine.steps == PRESETS["fast"]["refine.steps"] < default.refine.steps
    for name in PRESETS:  # every path of every preset is a setting, and its value valid
        apply_preset(name)


def test_old_flag_names_and_the_canonical_ones_set_the_same_setting():
    from comboverse_ops.app.cli import run_settings

    base = ["pic.png", "--boxes", "[[0, 0, 4, 4]]"]
    pairs = [("--steps", "--refine-steps", "refine.steps", "7"), ("--mc-resolution", "--lift3d-resolution",
             "lift3d.resolution", "64"), ("--ssds-weight", "--refine-weights-guidance", "refine.weights.guidance", "2"),
             ("--ssds-resolution", "--ssds-render-resolution", "ssds.render_resolution", "64"),
             ("--fov", "--camera-fov-deg", "camera.fov_deg", "30"), ("--max-faces", "--lift3d-max-faces",
             "lift3d.max_faces", "900")]
    from comboverse_ops.settings import get_path

    for old, new, path, value in pairs:
        a = get_path(run_settings(base + [old, value]).stages, path)
        b = get_path(run_settings(base + [new, value]).stages, path)
        assert a == b == type(a)(value), (old, new)
    s = run_settings(base + ["--seed", "5", "--prompt", "a cube on a box", "--ssds-t-range", "0.5", "0.7",
                             "--no-inpaint-use-phrases", "--ssds-model-resolution", "none"])
    assert s.stage("ssds").seed == s.stage("inpaint").seed == 5 and s.stage("ssds").prompt == "a cube on a box"
    assert s.stages.ssds.t_range == (0.5, 0.7) and s.stages.inpaint.use_phrases is False
    assert s.stages.ssds.model_resolution is None


def test_a_setting_out_of_range_names_its_flag_before_anything_runs(tmp_path, capsys):
    from comboverse_ops.app.cli import main

    assert main(["run", str(tmp_path / "none.png"), "--boxes", "[[0, 0, 4, 4]]", "--refine-steps", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--refine-steps" in err and "expected 0..5000, got -1" in err


def test_every_settings_class_checks_its_ranges_on_creation():
    from comboverse_ops.lift3d.reconstruct import Lift3DSettings
    from comboverse_ops.guidance.ssds import SSDSSettings, ViewSampling

    with pytest.raises(ValueError, match=r"Lift3D resolution: expected 16\.\.1024, got 4"):
        Lift3DSettings(resolution=4)
    with pytest.raises(ValueError, match=r"views: expected 1\.\.64, got 0"):
        SSDSSettings(views=0)
    with pytest.raises(ValueError, match="radius_scale"):
        ViewSampling(radius_scale=(0.0, 1.0))  # a class without a __post_init__ of its own checks too


def test_batch_lines_take_stage_settings_by_path_or_by_their_old_flat_name(tmp_path):
    import json

    from comboverse_ops.app.batch import read_manifest
    from comboverse_ops.app.pipeline import PipelineSettings

    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps({"id": f"s{i}", "image": "p.png", "boxes": [[0, 0, 5, 5]], "settings": s})
                           for i, s in enumerate((
        {"refine.steps": 9, "ssds.t_range": [0.5, 0.6]}, {"refine_steps": 9}, {"refine.steps": -3},
        {"refine.stepz": 1}))) + "\n")
    e = read_manifest(m)
    assert e[0].error is None and e[0].settings(PipelineSettings()).stages.ssds.t_range == (0.5, 0.6)
    assert e[1].error is None and e[1].settings(PipelineSettings()).stages.refine.steps == 9
    assert "refine.steps" in e[2].error and "expected 0..5000" in e[2].error
    assert "refine.stepz" in e[3].error


def test_values_that_must_change_together_apply_in_any_order():
    """A batch line or preset may name two fields that a check joins (guidance along rays needs
    the ray parameterisation) in either order; a wrong pair is still named."""
    from comboverse_ops.app.presets import StageSettings, apply_values

    for values in ({"refine.guidance_moves": "depth", "refine.parameterization": "ray"},
                   {"refine.parameterization": "ray", "refine.guidance_moves": "depth"}):
        got = apply_values(StageSettings(), values).refine
        assert (got.guidance_moves, got.parameterization) == ("depth", "ray")
    with pytest.raises(ValueError, match="refine.guidance_moves.*parameterization='ray'"):
        apply_values(StageSettings(), {"refine.guidance_moves": "depth"})
    with pytest.raises(ValueError, match="refine.no_such is not a setting"):
        apply_values(StageSettings(), {"refine.no_such": 1})
