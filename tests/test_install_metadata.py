"""What pip and ComfyUI-Manager install: requirements.txt and pyproject.toml agree, never name
what ComfyUI owns in the wrong place, bound every dependency above, and the README says which
versions were tested; without torchvision, SAM says what to install instead of a bare ImportError."""

import re
import subprocess
import sys
import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

from conftest import ROOT

OWNED_BY_COMFYUI = {"torch", "torchvision", "torchaudio"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_requirements_are_the_package_dependencies_without_what_comfyui_owns():
    deps = _pyproject()["dependencies"]
    assert sorted(_requirements()) == sorted(d for d in deps if _name(d) not in OWNED_BY_COMFYUI)
    assert not {_name(r) for r in _requirements()} & OWNED_BY_COMFYUI


def test_no_dependency_can_make_pip_replace_an_installed_torch():
    """torchvision pins the torch it was built for: any torchvision requirement in the install
    (not in an extra the user opts into) makes pip replace an installed torch that lacks one."""
    deps = _pyproject()["dependencies"]
    assert "torchvision" not in {_name(d) for d in deps}
    assert "torchvision" not in {_name(d) for d in _pyproject()["optional-dependencies"]["test"]}
    assert any(_name(d) == "torch" and ">=" in d for d in deps)


def test_every_dependency_has_an_upper_bound_and_a_tested_version_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    tested = readme[readme.index("### Tested versions"):]
    tested = tested[:tested.index("\n## ")]
    project = _pyproject()
    for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert "<" in dep, f"{dep}: no upper bound (its next major release is untested)"
        assert re.search(rf"\| `{re.escape(_name(dep))}` \| [0-9]", tested, re.I), \
            f"{_name(dep)}: not in the README's tested versions"


def test_sam_without_torchvision_names_what_to_install():
    code = ("import sys; sys.modules['torchvision'] = None\n"  # as if torchvision were not installed
            "from comboverse_ops.models.sam import require_segment_anything\n"
            "try:\n    require_segment_anything()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert message.startswith("SAM (ComboVerse Segment, comboverse run): torchvision is not installed"), message
    assert "torchvision==0." in message and "comfyui-comboverse[sam]" in message, message
