"""ComboVerse for ComfyUI: compositional image-to-3D.

ComfyUI imports this folder as a package and reads NODE_CLASS_MAPPINGS. Importing it needs no
ComfyUI (tests import the node classes directly) and loads no model.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # the box editor of ComboVerse Boxes (plain JavaScript, no build step)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
