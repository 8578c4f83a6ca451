"""One settings tree: every setting's default, range, help text and provenance live on its field.

Each stage's frozen settings dataclass declares its fields with :func:`setting`::

    steps: int = setting(200, "Optimisation steps.", lo=0, hi=5000, source="measured")

and is decorated with :func:`settings_class`, which checks every field against its declared
range or choices before the class's own ``__post_init__`` runs (so the range a widget offers
is the range the core accepts). From the same fields:

- the ComfyUI node widgets are generated (``nodes/widgets.py``: ``widget(RefineSettings, "steps")``);
- the ``comboverse run`` flags are generated (:func:`add_flags`, :func:`flag_values`), each
  help line ending in ``(default: X; paper)``;
- presets are tables of dotted paths (``comboverse_ops/app/presets.py``) applied with :func:`replace_path`.

Provenance (``source``): ``paper`` (ComboVerse or the method it builds on states the value),
``upstream`` (the model's own release uses it: TripoSR, SD, SAM, OWL), ``measured`` (chosen by a
benchmark or an ablation in this repository; the help says which), ``choice`` (a design choice
or a memory/speed knob without a measured optimum).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import MISSING, fields, is_dataclass

__all__ = ["SOURCES", "setting", "settings_class", "meta", "leaf_fields", "field_type", "get_path", "replace_path",
           "add_flags", "flag_name", "flag_values", "check_ranges", "describe_default"]

SOURCES = ("paper", "upstream", "measured", "choice")


def setting(default=MISSING, help: str = "", *, lo=None, hi=None, step=None, choices=None, source: str = "choice",
            factory=None, parts: dict[str, str] | None = None, flag: bool = True):
    """A dataclass field that carries its own documentation.

    Args:
        default: the value (immutable); use ``factory`` for a nested settings dataclass.
        help: one or two sentences for a user: the tooltip and the CLI help (say the unit).
        lo, hi: inclusive range of a number (or of each entry of a tuple); ``None``: open.
        step: the widget's step (a UI hint only).
        choices: the allowed values of a text setting (a combo widget, a CLI ``choices``).
        source: one of :data:`SOURCES`.
        factory: a callable giving the default (nested settings dataclasses).
        parts: for a tuple field, ``{part_name: help}`` per entry (node widgets show one per part).
        flag: False keeps it off the CLI (the run sets it: seeds, prompts).
    """
    if source not in SOURCES:
        raise ValueError(f"setting source: expected one of {SOURCES}, got {source!r}")
    md = {"help": help, "lo": lo, "hi": hi, "step": step, "choices": tuple(choices) if choices else None,
          "source": source, "parts": parts, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def meta(cls, name: str) -> dict:
    """The metadata of field ``name`` of ``cls`` (raises ``KeyError`` naming the class)."""
    for f in fields(cls):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def field_type(cls, name: str):
    """The resolved annotation of ``cls.name`` (modules use ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)[name]


def leaf_fields(cls, prefix: str = ""):
    """``(dotted path, owning class, field)`` of every setting, nested settings dataclasses expanded."""
    for f in fields(cls):
        t = field_type(cls, f.name)
        if is_dataclass(t):
            yield from leaf_fields(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f


def get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def replace_path(obj, path: str, value):
    """``obj`` with the (possibly nested, dotted) field ``path`` set to ``value``; frozen copies."""
    head, _, rest = path.partition(".")
    if not hasattr(obj, head) or head not in {f.name for f in fields(obj)}:
        raise ValueError(f"{path}: {type(obj).__name__} has no setting {head!r}; expected one of "
                         f"{[f.name for f in fields(obj)]}")
    new = replace_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new})


def _in_range(v, lo, hi) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def check_ranges(obj, label: str = "") -> None:
    """Raise ``ValueError`` naming the field (after ``label``), the expected range/choices and the value."""
    label = f"{label} " if label else ""
    for f in fields(obj):
        md, v = f.metadata, getattr(obj, f.name)
        if not md or v is None:
            continue
        if md.get("choices") and v not in md["choices"]:
            raise ValueError(f"{label}{f.name}: expected one of {list(md['choices'])}, got {v!r}")
        lo, hi = md.get("lo"), md.get("hi")
        if lo is None and hi is None:
            continue
        values = v if isinstance(v, tuple) else (v,)
        if not all(_in_range(x, lo, hi) for x in values):
            want = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if hi is None else f"<= {hi}")
            raise ValueError(f"{label}{f.name}: expected {want}, got {v!r}")


def settings_class(cls=None, *, label: str = ""):
    """Class decorator (above ``@dataclass(frozen=True)``): ranges and choices checked on creation,
    then the class's own ``__post_init__`` (cross-field rules). ``label`` starts every error."""
    if cls is None:
        return functools.partial(settings_class, label=label)
    own = cls.__dict__.get("__post_init__")
    if own is not None:  # the generated __init__ calls self.__post_init__()
        @functools.wraps(own)
        def __post_init__(self):
            check_ranges(self, label)
            own(self)

        cls.__post_init__ = __post_init__
    else:  # without one at decoration time the generated __init__ calls none: wrap __init__
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            check_ranges(self, label)

        cls.__init__ = __init__
    return cls


# --- the command line -------------------------------------------------------------------------

def describe_default(value) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return "none" if value is None else str(value)


def _parser_of(t):
    """argparse ``type`` for annotation ``t`` (``X | None`` accepts the word ``none``)."""
    args = typing.get_args(t)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        base = _parser_of(inner)
        return lambda s: None if s.strip().lower() == "none" else base(s)
    if t not in (int, float, str):
        raise TypeError(f"a setting of type {t} has no command-line form; make it int, float, str, bool, a tuple "
                        "of those or X | None, or declare it with setting(..., flag=False)")
    return t


def flag_name(path: str) -> str:
    return "--" + path.replace(".", "-").replace("_", "-")


def add_flags(parser, stages: dict[str, type], *, aliases: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """One flag per setting of each stage class: ``--<stage>-<field>`` (nested: ``--refine-weights-support``).

    Every flag's default is ``argparse.SUPPRESS`` (only flags given on the command line reach the
    settings, so they override a preset); the help ends in the dataclass default and its source.
    Returns ``{dest: dotted path}`` for :func:`flag_values`.
    """
    aliases = aliases or {}
    dests = {}
    for stage, cls in stages.items():
        group = parser.add_argument_group(f"{stage} ({cls.__name__})")
        default_obj = cls()
        for sub, owner, f in leaf_fields(cls):
            path = f"{stage}.{sub}"
            md = f.metadata
            if not md.get("flag", True):
                continue
            t = field_type(owner, f.name)
            value = get_path(default_obj, sub)
            names = [flag_name(path), *aliases.get(path, ())]
            dest = path.replace(".", "__")
            src = md.get("source", "choice")
            help_text = (md.get("help") or f.name).replace("%", "%%")
            lo, hi = md.get("lo"), md.get("hi")
            if lo is not None or hi is not None:
                help_text += f" [{'' if lo is None else lo}..{'' if hi is None else hi}]"
            help_text += f" (default: {describe_default(value)}; {src})"
            kw = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
            if t is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(t) is tuple:
                items = typing.get_args(t)
                if Ellipsis in items:  # tuple[float, ...]
                    kw.update(nargs="+", type=_parser_of(items[0]))
                else:
                    kw.update(nargs=len(items), type=_parser_of(items[0]),
                              metavar=tuple(md.get("parts") or [f"V{i}" for i in range(len(items))]))
            else:
                kw["type"] = _parser_of(t)
                if md.get("choices"):
                    kw["choices"] = md["choices"]
                else:
                    kw["metavar"] = {int: "N", float: "X"}.get(typing.get_args(t)[0] if typing.get_args(t) else t,
                                                              "TEXT")
            group.add_argument(*names, **kw)
            dests[dest] = path
    return dests


def flag_values(args, dests: dict[str, str]) -> dict[str, object]:
    """``{dotted path: value}`` of the setting flags given on the command line."""
    out = {}
    for dest, path in dests.items():
        if hasattr(args, dest):
            v = getattr(args, dest)
            out[path] = tuple(v) if isinstance(v, list) else v
    return out
