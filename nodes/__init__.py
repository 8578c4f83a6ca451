"""ComfyUI node classes of the pack: thin wrappers that call into comboverse_ops."""

from .combine import InitPose, SSDSRefine
from .export_mesh import ExportMesh
from .procedural import ProceduralScene

NODE_CLASS_MAPPINGS = {
    "ComboVerseInitPose": InitPose,
    "ComboVerseSSDSRefine": SSDSRefine,
    "ComboVerseExportMesh": ExportMesh,
    "ComboVerseProceduralScene": ProceduralScene,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ComboVerseInitPose": "ComboVerse InitPose",
    "ComboVerseSSDSRefine": "ComboVerse SSDSRefine",
    "ComboVerseExportMesh": "ComboVerse ExportMesh",
    "ComboVerseProceduralScene": "ComboVerse ProceduralScene",
}
