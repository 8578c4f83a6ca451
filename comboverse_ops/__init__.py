"""ComboVerse core: pure torch, never imports ComfyUI.

Heavy modules (rendering, export, models) are imported where they are used; this package's
import stays cheap.
"""

from .types.camera import Cameras
from .types.mesh import Mesh
from .types.pose import Pose
from .types.scene import Scene, SceneObject

__all__ = ["Cameras", "Mesh", "Pose", "Scene", "SceneObject"]
__version__ = "0.1.0"
