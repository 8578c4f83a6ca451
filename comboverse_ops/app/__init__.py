"""The ways to run the stages outside ComfyUI: the ``comboverse`` CLI and what it drives.

In: command-line arguments, a picture file and model folders / files (``run``), an API-format
workflow JSON (``run-workflow``), a JSONL manifest (``batch``).
Out: ``scene.glb`` plus previews and a JSON report, written atomically.

- :mod:`.cli`: argument parsing, the ``demo`` pipeline on a procedural scene.
- :mod:`.pipeline`: ``comboverse run``: every stage on one picture (:func:`run_pipeline`).
- :mod:`.workflow`: ``comboverse run-workflow``: a workflow through the pack's node classes.
- :mod:`.demo_ssds`: ``comboverse demo --ssds``: a wrong depth order fixed with the shipped spatial prior.
- :mod:`.batch`: ``comboverse batch``: many pictures on Ray workers, resumable.
"""
