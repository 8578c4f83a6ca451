"""Node widgets generated from the settings tree, so a widget's default, range and tooltip are the
ones the core checks and the CLI offers (``comboverse_ops/settings.py``).

A stage node declares ``SETTINGS = {input name: setting path}``: a dotted path into
:class:`~comboverse_ops.app.presets.StageSettings` (``"refine.steps"``, ``"refine.weights.support"``),
one entry of a tuple setting by its part name (``"ssds.t_range:t_min"``). Its ``INPUT_TYPES``
takes each widget from :func:`settings_widgets`; input names stay the node's own (workflows saved
with them keep loading), only the values come from the settings. :func:`widget_values` goes the
other way: the widget values that reproduce a :class:`StageSettings` (what ``comboverse run``
ran), so a workflow and the CLI run with the same settings objects.
"""

from __future__ import annotations

import dataclasses
import typing

from ..comboverse_ops.app.presets import StageSettings
from ..comboverse_ops.settings import field_type, get_path

__all__ = ["settings_widgets", "widget", "widget_values"]


def _field(path: str):
    """``(owning class, dataclasses.Field)`` of a dotted ``path`` below :class:`StageSettings`."""
    cls = StageSettings
    *parents, name = path.split(".")
    for p in parents:
        cls = field_type(cls, p)
    return cls, next(f for f in dataclasses.fields(cls) if f.name == name)


def _split(setting: str) -> tuple[str, str | None]:
    path, _, part = setting.partition(":")
    return path, part or None


def widget(setting: str, **extra) -> tuple:
    """The ComfyUI input spec of ``setting`` (``extra``: options such as ``multiline``, or a tooltip
    for this node's use of it)."""
    path, part = _split(setting)
    owner, f = _field(path)
    md = f.metadata
    t = field_type(owner, f.name)
    default = get_path(StageSettings(), path)
    tip = md.get("help", "")
    if part is not None:
        names = list(md["parts"])
        default, t = default[names.index(part)], typing.get_args(t)[names.index(part)]
        tip = md["parts"][part] or tip
    if md.get("choices"):
        return list(md["choices"]), {"default": default, "tooltip": tip, **extra}
    kind = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}.get(t)
    if kind is None:
        raise TypeError(f"{setting}: {t} has no ComfyUI widget")
    opts = {"default": default}
    if kind in ("INT", "FLOAT"):
        for key, name in (("lo", "min"), ("hi", "max"), ("step", "step")):
            if md.get(key) is not None:
                opts[name] = md[key]
    opts["tooltip"] = tip
    return kind, {**opts, **extra}


def settings_widgets(settings: dict[str, str]) -> dict[str, tuple]:
    """``{input name: spec}`` for a node's ``SETTINGS`` map."""
    return {name: widget(setting) for name, setting in settings.items()}


def widget_values(settings: dict[str, str], stages: StageSettings) -> dict[str, object]:
    """``{input name: value}``: the widget values of a node's ``SETTINGS`` that give ``stages``."""
    out = {}
    for name, setting in settings.items():
        path, part = _split(setting)
        value = get_path(stages, path)
        if part is not None:
            value = value[list(_field(path)[1].metadata["parts"]).index(part)]
        out[name] = value
    return out
