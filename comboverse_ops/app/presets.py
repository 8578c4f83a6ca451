"""Every stage's settings in one tree (:class:`StageSettings`) and the named presets.

A preset is a table of changes to the defaults, by dotted path into :class:`StageSettings`
(``"refine.steps"``, ``"ssds.t_range"``); the defaults themselves live on the settings fields
(:mod:`.settings`). ``comboverse run --preset NAME`` starts from one; flags given on the command
line override it.

- ``default``: the fields' defaults (measured where a benchmark chose them: docs/ssds_effect.md,
  benchmarks/layout.py).
- ``paper``: ComboVerse's values (10 novel views a step, the paper's rotation learning rate, no
  terms beyond the paper; every field whose source is ``paper`` keeps its default, which is the
  paper's: every step guided, c = 25, t in [0.8, 0.9]).
- ``fast``: quicker, at a measured cost (docs/pipeline_benchmark.md): 120 refine steps without
  guidance too (3D box IoU 0.83 against 0.87 on the layout benchmark) and score distillation at
  384 px instead of 512 (22.9 s warm instead of 27.5 s on an H100; what it costs a real SD 1.5's
  judgement is not measured).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..decompose.crops import RecenterSettings
from ..decompose.detect import DetectSettings
from ..compose.init_pose import CameraSettings, InitSettings
from ..decompose.inpaint import InpaintSettings
from ..lift3d.reconstruct import Lift3DSettings
from ..compose.refine import RefineSettings
from ..decompose.segment import SegmentSettings
from ..settings import get_path, replace_path, setting
from ..guidance.ssds import SSDSSettings

__all__ = ["StageSettings", "PRESETS", "apply_preset", "apply_values"]


@dataclass(frozen=True)
class StageSettings:
    """The settings of every stage, in pipeline order (each the dataclass its node's widgets come from)."""

    detect: DetectSettings = setting(factory=DetectSettings, help="Detect: boxes from phrases (OWLv2).")
    segment: SegmentSettings = setting(factory=SegmentSettings, help="Segment: SAM masks.")
    recenter: RecenterSettings = setting(factory=RecenterSettings, help="How objects are framed for Lift3D.")
    inpaint: InpaintSettings = setting(factory=InpaintSettings, help="Inpaint: SD inpainting of occluded objects.")
    lift3d: Lift3DSettings = setting(factory=Lift3DSettings, help="Lift3D: TripoSR, one mesh per object.")
    camera: CameraSettings = setting(factory=CameraSettings, help="InitPose: the reference camera.")
    init: InitSettings = setting(factory=InitSettings, help="InitPose: initial poses.")
    refine: RefineSettings = setting(factory=RefineSettings, help="SSDSRefine: the pose optimisation.")
    ssds: SSDSSettings = setting(factory=SSDSSettings, help="SSDSRefine: spatially-aware score distillation.")


# The presets table: the one place a preset's values are written.
PRESETS: dict[str, dict[str, object]] = {
    "default": {},
    # Only where the default is not the paper's: a field whose source is "paper" (c = 25, t in
    # [0.8, 0.9], every step guided, the camera parameterisation, ...) has the paper's value as its
    # default. A change of such a default to a measured value adds the paper's value here.
    "paper": {
        "ssds.views": 10,  # 10 novel views per iteration
        "refine.lr_rotation": 0.001,  # the paper's; default 0.01 (benchmarks/layout.py)
        "refine.weights.silhouette": 0.0,  # terms beyond the paper off
        "refine.weights.penetration": 0.0,
        "refine.weights.support": 0.0,
        "init.fit_projected_box": False,
        "refine.guided_steps": 0,  # 200 steps with guidance too (default 120: docs/pipeline_benchmark.md)
        "refine.guidance_every": 1,  # guidance at every step (default every 2nd)
        "refine.stop_tolerance": 0.0,  # every step runs (default: the convergence stop)
    },
    # Measured trades (module doc; docs/pipeline_benchmark.md).
    "fast": {
        "refine.steps": 120,
        "ssds.model_resolution": 384,
    },
}


def apply_values(stages: StageSettings, values: dict[str, object], what: str = "settings") -> StageSettings:
    """``stages`` with each ``{dotted path: value}`` set (frozen copies; every class checks its values).

    Raises ``ValueError`` naming ``what``, the path and the problem.
    """
    # One settings object at a time, with all of its values at once: a check that joins two of its
    # fields (e.g. guidance_moves "depth" needs parameterization "ray") sees both new values.
    groups: dict[str, dict[str, object]] = {}
    for path, value in values.items():
        parent, _, name = path.rpartition(".")
        groups.setdefault(parent, {})[name] = value
    for parent, changes in groups.items():
        first = f"{parent}.{next(iter(changes))}" if parent else next(iter(changes))
        try:
            obj = get_path(stages, parent) if parent else stages
            known = {f.name for f in dataclasses.fields(obj)}
        except (AttributeError, TypeError):
            raise ValueError(f"{what}: {first} is not a setting; expected a path like refine.steps") from None
        unknown = [n for n in changes if n not in known]
        if unknown:
            raise ValueError(f"{what}: {parent + '.' if parent else ''}{unknown[0]} is not a setting; expected a path "
                             "like refine.steps")
        try:
            new = dataclasses.replace(obj, **changes)
            stages = replace_path(stages, parent, new) if parent else new
        except ValueError as e:
            names = ", ".join(f"{parent + '.' if parent else ''}{n}" for n in changes)
            raise ValueError(f"{what}: {names}: {e}") from None
    return stages


def apply_preset(name: str, stages: StageSettings | None = None) -> StageSettings:
    """The preset ``name`` applied to ``stages`` (default: every default)."""
    if name not in PRESETS:
        raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return apply_values(stages or StageSettings(), PRESETS[name], what=f"preset {name}")
