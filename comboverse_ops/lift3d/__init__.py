"""Lift3D: one mesh per object crop (built-in TripoSR), and meshes from other 3D nodes.

Submodules are imported where they are used, so importing this package stays cheap.
"""
