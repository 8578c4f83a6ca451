import importlib.util
import sys
from collections import defaultdict, deque
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


# ----------------------------------------------------------------------------------------------
# Running an API-format workflow through the node classes, as ComfyUI's executor would

DISPLAY_ONLY = {"PreviewImage", "Preview3D"}  # core output nodes: ComfyUI runs them (tests/test_comfyui_real.py)


def api_order(prompt: dict) -> list[str]:
    """The prompt's node ids in an order where every node comes after its inputs."""
    deps = defaultdict(set)
    for key, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                deps[key].add(value[0])
    indeg = {k: len(deps[k]) for k in prompt}
    users = defaultdict(list)
    for k, ds in deps.items():
        for d in ds:
            users[d].append(k)
    ready = deque(sorted(k for k, n in indeg.items() if n == 0))
    order = []
    while ready:
        k = ready.popleft()
        order.append(k)
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    assert len(order) == len(prompt), "the API workflow has a cycle"
    return order


def run_api_workflow(pack, prompt: dict, overrides: dict | None = None, core: dict | None = None) -> dict:
    """Run ``prompt`` node by node; return each node's outputs by id.

    ``overrides``: ``{class_type: {input: value}}`` replacing widget values. ``core``:
    ``{class_type: function(**inputs) -> outputs}`` standing in for core nodes (LoadImage);
    display-only core nodes are skipped.
    """
    results = {}
    for key in api_order(prompt):
        node = prompt[key]
        kind = node["class_type"]
        if kind in DISPLAY_ONLY:
            continue
        kwargs = {name: results[v[0]][v[1]] if isinstance(v, list) else v for name, v in node["inputs"].items()}
        kwargs.update((overrides or {}).get(kind, {}))
        if core and kind in core:
            results[key] = core[kind](**kwargs)
            continue
        cls = pack.NODE_CLASS_MAPPINGS[kind]
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict):
            out = out["result"]
        assert len(out) == len(cls.RETURN_TYPES), f"node {key} ({kind})"
        results[key] = out
    return results

