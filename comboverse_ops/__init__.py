"""ComboVerse core: pure torch, never imports ComfyUI.

Heavy modules (rendering, export, models) are imported where they are used; this package's
import stays cheap.
"""

from .camera import Cameras
from .mesh import Mesh
from .pose import Pose
from .scene import Scene, SceneObject

__all__ = ["Cameras", "Mesh", "Pose", "Scene", "SceneObject"]
__version__ = "0.1.0"
