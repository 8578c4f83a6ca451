"""ComfyUI node classes of the pack: thin wrappers that call into comboverse_ops."""

from .export_mesh import ExportMesh
from .procedural import ProceduralScene

NODE_CLASS_MAPPINGS = {
    "ComboVerseExportMesh": ExportMesh,
    "ComboVerseProceduralScene": ProceduralScene,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ComboVerseExportMesh": "ComboVerse ExportMesh",
    "ComboVerseProceduralScene": "ComboVerse ProceduralScene",
}
