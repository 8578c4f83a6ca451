"""Running an API-format workflow through the node classes, as ComfyUI's executor would.

Plain functions with no import-time side effects (no ``sys.path`` edits): tests/conftest.py
uses them in the test process, and tests/as_installed.py in a process where the pack is only a
folder, as in ComfyUI's custom_nodes.
"""

from __future__ import annotations

from collections import defaultdict, deque


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

