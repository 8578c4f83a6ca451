"""Running an API-format workflow through the node classes in tests: the product's runner
(comboverse_ops/app/workflow.py, the code behind ``comboverse run-workflow``), with widget values
overridden and core nodes stood in for.

Plain functions with no import-time side effects (no ``sys.path`` edits): tests/conftest.py
uses them in the test process, and tests/as_installed.py in a process where the pack is only a
folder, as in ComfyUI's custom_nodes; so the runner is always taken from the loaded pack.
"""

from __future__ import annotations

import copy
import importlib


def workflow_module(pack):
    """The pack's own comboverse_ops.app.workflow (the pack as ComfyUI loaded it, not a checkout)."""
    return importlib.import_module(pack.__name__ + ".comboverse_ops.app.workflow")


def api_order(prompt: dict) -> list[str]:
    """The prompt's node ids in an order where every node comes after its inputs."""
    from comboverse_ops.app.workflow import execution_order

    return execution_order(prompt)


def with_overrides(prompt: dict, overrides: dict | None) -> dict:
    """A copy of ``prompt`` whose nodes of class ``k`` take the values ``overrides[k]``."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node["inputs"].update((overrides or {}).get(node["class_type"], {}))
    return prompt


def run_api_workflow(pack, prompt: dict, overrides: dict | None = None, core: dict | None = None,
                     log=None) -> dict:
    """Run ``prompt`` node by node; return each node's outputs by id.

    ``overrides``: ``{class_type: {input: value}}`` replacing widget values. ``core``:
    ``{class_type: function(**inputs) -> outputs}`` standing in for core nodes (LoadImage);
    display-only core nodes are skipped.
    """
    outputs, _ = workflow_module(pack).run_workflow(with_overrides(prompt, overrides), pack.NODE_CLASS_MAPPINGS,
                                                    core=core, log=log)
    return outputs
