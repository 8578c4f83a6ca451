"""ComfyUI node classes of the pack: thin wrappers that call into comboverse_ops."""

from .boxes import Boxes
from .combine import InitPose, SSDSRefine
from .depth import Depth, LoadDepthModel
from .detect import Detect, LoadDetector
from .export_mesh import ExportMesh
from .guidance import LoadGuidanceModel
from .inpaint import Inpaint, InpaintFinish, InpaintPrepare
from .lift3d import Lift3D, LoadLift3DModel, MeshesFromFile, MeshesFromMESH
from .loaders import LoadInpaintModel, LoadSAM
from .procedural import ProceduralScene
from .segment import Segment

NODE_CLASS_MAPPINGS = {
    "ComboVerseLoadDepthModel": LoadDepthModel,
    "ComboVerseDepth": Depth,
    "ComboVerseLoadSAM": LoadSAM,
    "ComboVerseBoxes": Boxes,
    "ComboVerseSegment": Segment,
    "ComboVerseLoadDetector": LoadDetector,
    "ComboVerseDetect": Detect,
    "ComboVerseLoadInpaintModel": LoadInpaintModel,
    "ComboVerseInpaint": Inpaint,
    "ComboVerseInpaintPrepare": InpaintPrepare,
    "ComboVerseInpaintFinish": InpaintFinish,
    "ComboVerseLoadLift3DModel": LoadLift3DModel,
    "ComboVerseLift3D": Lift3D,
    "ComboVerseMeshesFromMESH": MeshesFromMESH,
    "ComboVerseMeshesFromFile": MeshesFromFile,
    "ComboVerseLoadGuidanceModel": LoadGuidanceModel,
    "ComboVerseInitPose": InitPose,
    "ComboVerseSSDSRefine": SSDSRefine,
    "ComboVerseExportMesh": ExportMesh,
    "ComboVerseProceduralScene": ProceduralScene,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ComboVerseLoadDepthModel": "ComboVerse Load Depth Model",
    "ComboVerseDepth": "ComboVerse Depth",
    "ComboVerseLoadSAM": "ComboVerse Load SAM",
    "ComboVerseBoxes": "ComboVerse Boxes",
    "ComboVerseSegment": "ComboVerse Segment",
    "ComboVerseLoadDetector": "ComboVerse Load Detector",
    "ComboVerseDetect": "ComboVerse Detect",
    "ComboVerseLoadInpaintModel": "ComboVerse Load Inpaint Model",
    "ComboVerseInpaint": "ComboVerse Inpaint",
    "ComboVerseInpaintPrepare": "ComboVerse Inpaint Prepare",
    "ComboVerseInpaintFinish": "ComboVerse Inpaint Finish",
    "ComboVerseLoadLift3DModel": "ComboVerse Load Lift3D Model",
    "ComboVerseLift3D": "ComboVerse Lift3D",
    "ComboVerseMeshesFromMESH": "ComboVerse Meshes From MESH",
    "ComboVerseMeshesFromFile": "ComboVerse Meshes From File",
    "ComboVerseLoadGuidanceModel": "ComboVerse Load Guidance Model",
    "ComboVerseInitPose": "ComboVerse InitPose",
    "ComboVerseSSDSRefine": "ComboVerse SSDSRefine",
    "ComboVerseExportMesh": "ComboVerse ExportMesh",
    "ComboVerseProceduralScene": "ComboVerse ProceduralScene",
}
