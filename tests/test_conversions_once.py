"""Each conversion is written once (issue 13, Deliver 4): a grep of the pack's code finds each one in
a single module, and every other module calls it from there."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("nodes/*.py"), *ROOT.glob("comboverse_ops/**/*.py")]


def _code(path: Path) -> str:
    """The file without comments and docstring-like text."""
    text = re.sub(r'"""[\s\S]*?"""', "", path.read_text())
    return "\n".join(line.split("#")[0] for line in text.splitlines())


@pytest.mark.parametrize("what, pattern, where", [
    # core MESH -> Mesh: the linear colours of a core MESH become the pack's sRGB values
    ("core MESH -> Mesh", r"linear_to_srgb\(.*/\s*255", ["comboverse_ops/meshio/core_mesh.py"]),
    # texture -> vertex colours
    ("texture -> vertex colours", r"grid_sample\(tex,", ["comboverse_ops/types/mesh.py"]),
    # unique names: a counter loop, and phrases turned into names
    ("unique names", r"while \w+ in \w+", ["comboverse_ops/types/scene.py"]),
    ("names from phrases", r'replace\(" ", "_"\)', ["comboverse_ops/types/scene.py"]),
])
def test_a_conversion_is_written_once(what, pattern, where):
    hits = sorted({p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(pattern, _code(p))})
    assert hits == where, f"{what} written in {hits}; call it from {where}"


def test_only_the_renderer_samples_textures_at_fragments():
    """The renderer's ``shade`` colours fragments; vertex colours come from texture_to_vertex_colors."""
    hits = sorted({p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(r"\bshade\b", _code(p))})
    assert hits and all(h.startswith("comboverse_ops/render/") for h in hits), hits


def test_the_picture_is_converted_where_it_enters_a_stage_and_nowhere_after():
    """Segment and Inpaint convert the picture they are given once (Inpaint's windows and its
    untouched objects' crops share one conversion); ``comboverse run`` reuses Segment's."""
    calls = {p.relative_to(ROOT).as_posix(): len(re.findall(r"(?<!def )\bsource_rgb\(", _code(p))) for p in SOURCES}
    assert {k: v for k, v in calls.items() if v} == {"comboverse_ops/decompose/segment.py": 1,
                                                      "comboverse_ops/decompose/inpaint.py": 2}


def test_segment_keeps_the_picture_it_converted():
    import torch

    from comboverse_ops.decompose.segment import segment_image, source_rgb

    image = torch.rand(32, 40, 4, generator=torch.Generator().manual_seed(0))  # RGBA
    masks = torch.zeros(1, 32, 40)
    masks[0, 8:20, 10:30] = 1
    seg = segment_image(image, masks=masks)
    rgb, alpha = source_rgb(image)
    assert torch.equal(seg.rgb, rgb) and torch.equal(seg.alpha, alpha)
