"""Every default lives in one place (issue 13): the number appears once in the pack's source, and the
nodes, the CLI and the core read it from there."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in [*ROOT.glob("nodes/*.py"), *ROOT.glob("comboverse_ops/**/*.py")]]


def _code(path: Path) -> str:
    """The file without comments and docstring-like text (only code may restate a default)."""
    text = re.sub(r'"""[\s\S]*?"""', "", path.read_text())
    return "\n".join(line.split("#")[0] for line in text.splitlines())


@pytest.mark.parametrize("pattern, where", [
    (r"\b50_?000\b", "comboverse_ops/meshio/decimate.py"),  # faces per object (paper)
    (r"(?i)foreground\w*[^\n]*\b0\.85\b", "comboverse_ops/lift3d/preprocess.py"),  # TripoSR's foreground ratio
    (r"\(0\.8,\s*0\.9\)", "comboverse_ops/guidance/ssds.py"),  # the SSDS noise band (paper)
    # c = 25 (paper)
    (r"(?:reweight|default_factor)\w*\s*(?::[^=\n]*)?=\s*(?:setting\()?25(?:\.0)?\b", "comboverse_ops/guidance/ssds.py"),
    # refinement steps
    (r"setting\(200\b|\"default\":\s*200\b|(?:refine_)?steps\s*=\s*200\b|refine_steps\s*:[^=\n]*=\s*200\b",
     "comboverse_ops/compose/refine.py"),
    (r"\b7\.5\b", "comboverse_ops/decompose/inpaint.py"),  # SD inpainting's guidance scale (paper)
    (r"(?:elevation\w*|\"default\")\s*(?::[^=\n]*)?[=:]\s*(?:setting\()?-15(?:\.0)?\b",
     "comboverse_ops/compose/init_pose.py"),  # the reference camera's elevation
])
def test_a_default_is_written_once(pattern, where):
    hits = [(p.relative_to(ROOT).as_posix(), n + 1) for p in SOURCES
            for n, line in enumerate(_code(p).splitlines()) if re.search(pattern, line)]
    assert [h[0] for h in hits] == [where], f"{pattern} written in {hits}; read it from {where}"


def test_the_nodes_show_the_settings_defaults(pack):
    from comboverse_ops.decompose.crops import RecenterSettings
    from comboverse_ops.lift3d.reconstruct import Lift3DSettings
    from comboverse_ops.app.pipeline import PipelineSettings
    from comboverse_ops.guidance.ssds import SSDSSettings
    from tiny_models import node_class

    def default(module, name, widget):
        spec = node_class(pack, module, name).INPUT_TYPES()
        return {**spec.get("required", {}), **spec.get("optional", {})}[widget][1]["default"]

    assert default("lift3d", "Lift3D", "max_faces") == Lift3DSettings().max_faces == \
        PipelineSettings().stages.lift3d.max_faces
    assert default("lift3d", "Lift3D", "foreground_ratio") == Lift3DSettings().foreground_ratio
    assert default("segment", "Segment", "foreground_ratio") == RecenterSettings().foreground_ratio
    g = SSDSSettings()
    assert (default("combine", "SSDSRefine", "t_min"), default("combine", "SSDSRefine", "t_max")) == g.t_range
    assert default("combine", "SSDSRefine", "reweight_factor") == g.reweight
    assert default("combine", "SSDSRefine", "views_per_step") == g.views


def test_every_settings_widget_shows_the_settings_default_and_range(pack):
    """Each stage node's SETTINGS map names a setting per widget; the widget's default is the
    setting's and its range the one the settings class accepts (checked at both ends)."""
    from comboverse_ops.app.presets import StageSettings
    from comboverse_ops.settings import replace_path

    checked = 0
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        settings = getattr(cls, "SETTINGS", None)
        if not settings:
            continue
        spec = cls.INPUT_TYPES()
        inputs = {**spec.get("required", {}), **spec.get("optional", {})}
        from_settings = pack.nodes.widgets.widget_values(settings, StageSettings())
        for widget, setting in settings.items():
            opts = inputs[widget][1]
            assert opts["default"] == from_settings[widget], (name, widget)
            path = setting.split(":")[0]
            for end in ("min", "max"):
                if end in opts and ":" not in setting:
                    replace_path(StageSettings(), path, opts[end])  # the core accepts the widget's ends
            checked += 1
    assert checked >= 30
