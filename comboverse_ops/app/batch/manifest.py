"""Batch manifests: one scene per JSON line, and the procedural manifest with known answers.

A line (keys other than these are an error, so a typo never silently drops a setting)::

    {"id": "bear_chair",                      # optional; default the image's file stem
     "image": "pictures/bear_chair.png",      # relative paths are relative to the manifest's folder
     "boxes": [[210, 40, 420, 300], [150, 200, 470, 600]],   # pixels (x0, y0, x1, y1), one per object
     "phrases": ["a teddy bear", "a chair"],  # optional, one per box; without "boxes", --detect finds them
     "prompt": "a teddy bear (sitting on:25) a chair",        # optional
     "settings": {"refine.steps": 100, "seed": 3},            # optional: run fields, stage paths, old flat names
     "truth": {"seed": 3, "objects": 3, "image_size": 256}}   # procedural scenes only

A scene is identified by its ``id`` (a file-name-safe string) and versioned by :func:`scene_hash`:
the line itself plus the settings it runs with. A committed scene whose hash differs is run again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..pipeline import LEGACY_NAMES, PipelineSettings, with_settings
from ..presets import StageSettings
from ...settings import field_type, leaf_fields

__all__ = ["SceneEntry", "read_manifest", "scene_hash", "write_procedural_manifest", "ManifestError"]

LINE_KEYS = ("id", "image", "boxes", "phrases", "prompt", "settings", "truth")
# Per-scene settings may change any PipelineSettings field but these: prompt and phrases have
# their own keys, and the device is the worker's (one GPU each).
NOT_PER_SCENE = ("prompt", "phrases", "device", "stages")
TRUTH_KEYS = ("seed", "objects", "image_size")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """The manifest as a whole cannot be run (unreadable, duplicate ids)."""


@dataclass(frozen=True)
class SceneEntry:
    """One manifest line, checked.

    Attributes:
        index: 1-based line number in the manifest.
        id: file-name-safe scene name (the output folder ``OUT/scenes/<id>/``).
        line: the line as parsed (for the hash and the summary).
        image: the picture's path, resolved against the manifest's folder (None if missing).
        error: why the line cannot run (bad input: reported for this scene, the others run), or None.
    """

    index: int
    id: str
    line: dict
    image: Path | None
    error: str | None = None

    def settings(self, base: PipelineSettings) -> PipelineSettings:
        """``base`` with this scene's prompt, phrases and per-scene settings."""
        phrases = self.line.get("phrases")
        if isinstance(phrases, list):
            phrases = json.dumps(phrases)
        return with_settings(replace(base, prompt=self.line.get("prompt", "") or "", phrases=phrases),
                             {k: tuple(v) if isinstance(v, list) else v for k, v in self.line.get("settings", {}).items()},
                             what=f"line {self.index} settings")


def _default_id(image: str) -> str:
    stem = Path(image).stem or "scene"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:128] or "scene"


def _check_line(line: dict) -> str | None:
    """What is wrong with a parsed line (the first problem), or None."""
    unknown = sorted(set(line) - set(LINE_KEYS))
    if unknown:
        return f"unknown key(s) {unknown}; expected some of {list(LINE_KEYS)}"
    if not isinstance(line.get("image"), str) or not line["image"]:
        return 'no "image": give the picture\'s path, e.g. "image": "pictures/scene_1.png"'
    if "boxes" not in line and not line.get("phrases"):
        return ('no "boxes" and no "phrases": give one pixel box (x0, y0, x1, y1) per object, e.g. "boxes": '
                '[[10, 20, 110, 140]], or the objects\' "phrases" and run with --detect DIR to find their boxes')
    if "prompt" in line and not isinstance(line["prompt"], str):
        return f'"prompt": expected text, got {type(line["prompt"]).__name__}'
    if "phrases" in line and not isinstance(line["phrases"], (str, list)):
        return f'"phrases": expected a list of text or one string, got {type(line["phrases"]).__name__}'
    settings = line.get("settings", {})
    if not isinstance(settings, dict):
        return f'"settings": expected an object of PipelineSettings fields, got {type(settings).__name__}'
    types = {f.name: f.type for f in fields(PipelineSettings) if f.name not in NOT_PER_SCENE}
    staged = {path: getattr(field_type(owner, f.name), "__name__", "optional")
              for path, owner, f in leaf_fields(StageSettings)}
    types |= staged | {old: staged[new] for old, new in LEGACY_NAMES.items()}
    bad = sorted(set(settings) - set(types))
    if bad:
        return (f'"settings": unknown or not per-scene field(s) {bad}; expected run fields '
                f'{sorted(set(types) - set(staged) - set(LEGACY_NAMES))} or stage settings such as refine.steps '
                "(comboverse run --help lists them)")
    for key, value in settings.items():
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool),
              "tuple": lambda v: isinstance(v, list),
              "optional": lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str)}.get(types[key], lambda v: v is None or isinstance(v, str))
        if not ok(value):
            return f'"settings": {key} expected {types[key]}, got {value!r}'
    try:
        with_settings(PipelineSettings(), {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    except ValueError as e:
        return f'"settings": {e}'
    truth = line.get("truth")
    if truth is not None:
        if not isinstance(truth, dict) or set(truth) != set(TRUTH_KEYS) or \
                not all(isinstance(truth[k], int) for k in TRUTH_KEYS):
            return f'"truth": expected integers {list(TRUTH_KEYS)} (a procedural scene), got {truth!r}'
    return None


def read_manifest(path: str | Path) -> list[SceneEntry]:
    """Every line of a JSONL manifest as a :class:`SceneEntry` (blank lines and ``#`` lines skipped).

    A line that is not valid JSON or misses a key becomes an entry with ``error`` set (that scene
    fails, the others run). Raises :class:`ManifestError` for an unreadable file, an empty one, or
    two lines with the same id (which output belongs to which would be a guess).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest: no file at {path}; give a JSONL file with one scene per line "
                            "(or --procedural N to write one)")
    entries: list[SceneEntry] = []
    seen: dict[str, int] = {}
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            entries.append(SceneEntry(n, f"line_{n}", {"raw": text[:200]}, None, f"line {n} is not JSON: {e}"))
            continue
        if not isinstance(line, dict):
            entries.append(SceneEntry(n, f"line_{n}", {"raw": text[:200]}, None,
                                      f"line {n}: expected a JSON object, got {type(line).__name__}"))
            continue
        raw_id = line.get("id")
        sid = raw_id if isinstance(raw_id, str) else _default_id(str(line.get("image") or f"line_{n}"))
        error = _check_line(line)
        if error is None and "id" in line and not isinstance(raw_id, str):
            error = f'"id": expected text (a folder name), got {raw_id!r}'
            sid = f"line_{n}"
        if error is None and not ID_PATTERN.match(sid):
            error = (f'"id": expected letters, digits, ".", "_" or "-" (a folder name, up to 128), got {sid!r}')
            sid = f"line_{n}"
        if sid in seen:
            raise ManifestError(f"manifest {path}: lines {seen[sid]} and {n} both have the id {sid!r}; give each "
                                'line a distinct "id" (it names the scene\'s output folder)')
        seen[sid] = n
        image = (path.parent / line["image"]) if isinstance(line.get("image"), str) and line["image"] else None
        entries.append(SceneEntry(n, sid, line, image, None if error is None else f"line {n}: {error}"))
    if not entries:
        raise ManifestError(f"manifest {path}: no scenes in it; expected one JSON object per line")
    return entries


def scene_hash(entry: SceneEntry, settings: PipelineSettings, stand_ins: bool) -> str:
    """sha256 of the line and the settings it runs with (the device excluded: where it runs does
    not change what is asked). A committed scene with another hash is stale and runs again."""
    s = asdict(entry.settings(settings))
    s.pop("device")
    blob = json.dumps({"line": entry.line, "settings": s, "stand_ins": stand_ins}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def procedural_lines(count: int, first_seed: int = 0, objects: int = 3, image_size: int = 256) -> list[dict]:
    """The truth part and id of each procedural line (cheap: no scene is built)."""
    return [{"id": f"proc_{seed:05d}", "truth": {"seed": seed, "objects": objects, "image_size": image_size}}
            for seed in range(first_seed, first_seed + count)]


def write_procedural_manifest(path: str | Path, count: int, first_seed: int = 0, objects: int = 3,
                              image_size: int = 256, log=print) -> Path:
    """Write ``count`` procedural scenes (:mod:`..procedural`, seeds ``first_seed...``) as a manifest.

    Each scene's picture goes to ``<manifest folder>/procedural/<id>.png``; its line holds the
    boxes a user would draw, the phrases, the prompt stating the relations, and ``truth`` (the
    seed and sizes that rebuild the scene with its true poses, to score the result).
    An existing manifest written with the same arguments is kept as it is (its pictures too);
    one with other contents is an error, so a user's manifest is never overwritten.
    """
    import torch

    from ...meshio.atomic import save_png_atomic, write_bytes_atomic
    from ...synthetic.procedural import ProceduralSettings, make_procedural_scene

    path = Path(path)
    if not 2 <= objects <= 5:
        raise ValueError(f"--objects: expected 2 to 5 objects per procedural scene, got {objects}")
    if count < 1:
        raise ValueError(f"--procedural: expected a number of scenes >= 1, got {count}")
    wanted = procedural_lines(count, first_seed, objects, image_size)
    if path.exists():
        try:
            have = [json.loads(t) for t in path.read_text().splitlines() if t.strip()]
            same = [{"id": h.get("id"), "truth": h.get("truth")} for h in have] == wanted and all(
                (path.parent / h["image"]).is_file() for h in have)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            same = False
        if same:
            log(f"procedural manifest {path}: already written with these options, kept")
            return path
        raise ManifestError(f"--procedural: {path} exists and is not the procedural manifest of these options "
                            f"({count} scenes from seed {first_seed}, {objects} objects, {image_size} px); give "
                            "another manifest path or remove it")
    settings = ProceduralSettings(min_objects=objects, max_objects=objects, image_size=image_size)
    lines = []
    for w in wanted:
        scene = make_procedural_scene(w["truth"]["seed"], settings, device=torch.device("cpu"))
        obs = scene.observe()
        image = Path("procedural") / f"{w['id']}.png"
        save_png_atomic(path.parent / image, obs.image)
        lines.append({"id": w["id"], "image": str(image), "boxes": obs.boxes.round().int().tolist(),
                      "phrases": list(scene.phrases), "prompt": scene.prompt, "truth": w["truth"]})
    write_bytes_atomic(path, "".join(json.dumps(line) + "\n" for line in lines).encode())
    log(f"wrote procedural manifest {path} ({count} scenes, pictures in {path.parent / 'procedural'})")
    return path
