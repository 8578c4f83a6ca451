import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the core is importable from a checkout without installing it
    sys.path.insert(0, str(ROOT))


def load_pack(module_name: str = "ComfyUI-ComboVerse"):
    """Import the repo folder the way ComfyUI imports a folder in custom_nodes."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    """ComfyUI's output folder, as the nodes see it outside ComfyUI."""
    out = tmp_path / "output"
    monkeypatch.setenv("COMBOVERSE_OUTPUT_DIR", str(out))
    return out


@pytest.fixture(autouse=True, scope="session")
def offline():
    """Nothing in the suite may reach a model hub (nothing does at run time either)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP spin-waits make
    them many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Running an API-format workflow through the node classes (the runner of `comboverse run-workflow`)
# goes through workflow_runner.py, which the installed-like check (tests/as_installed.py) also loads
# in a process without this file's sys.path.
from workflow_runner import api_order, run_api_workflow  # noqa: E402,F401
