"""ComboVerse InitPose and SSDSRefine: compose the objects into one scene (METHOD.md Stage 2)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..comboverse_ops.compose.init_pose import (
    InitSettings,
    depth_from_image,
    init_poses,
    reference_camera,
)
from ..comboverse_ops.types.layout import layout_meta
from ..comboverse_ops.compose.refine import (
    LossWeights,
    RefineSettings,
    RefineTargets,
    refine_poses,
)
from ..comboverse_ops.render import render_scene
from ..comboverse_ops.types.scene import Scene, SceneObject, object_names
from ..comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings
from . import host
from .host import GUIDANCE_MODEL, LAYOUT, MESHES, SCENE, Progress
from .widgets import settings_widgets, widget


def _reference_image(image: torch.Tensor, what: str = "reference_image") -> torch.Tensor:
    """ComfyUI IMAGE ``[1, H, W, C]`` to ``[H, W, 3]``."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{what}: expected one image [1, H, W, C], got {tuple(image.shape)}; pick one frame "
                         "(ComfyUI's ImageFromBatch)")
    if image.shape[-1] not in (3, 4):
        raise ValueError(f"{what}: expected 3 or 4 channels, got {image.shape[-1]}")
    return image[0, ..., :3].float()


def _preview(scene: Scene) -> torch.Tensor:
    with torch.no_grad():
        return render_scene(scene, scene.camera).rgb.detach().cpu().float().clamp(0, 1)


class InitPose:
    DESCRIPTION = ("Places every object in one scene, as ComboVerse does: each mesh faces the camera, sits at its "
                   "box centre, is sized to its box, and at the depth the (optional) depth map gives inside its "
                   "mask. Outputs the scene and a render of it from the reference camera.")
    CATEGORY = "ComboVerse/combine"
    FUNCTION = "init"
    RETURN_TYPES = (SCENE, "IMAGE")
    RETURN_NAMES = ("scene", "preview")
    OUTPUT_TOOLTIPS = ("Objects with initial poses and the reference camera.",
                       "The initial composition seen from the reference camera.")
    SETTINGS = {"fov_deg": "camera.fov_deg", "elevation_deg": "camera.elevation_deg", "depth_kind": "init.depth_kind"}

    @classmethod
    def INPUT_TYPES(cls):
        w = settings_widgets(cls.SETTINGS)
        return {
            "required": {
                "meshes": (MESHES, {"tooltip": "One mesh per object in the canonical frame (Lift3D, or Meshes From "
                                               "MESH), in the layout's order."}),
                "layout": (LAYOUT, {"tooltip": "Boxes, phrases and masks of the objects (Segment)."}),
                "reference_image": ("IMAGE", {"tooltip": "The source picture the layout was made on."}),
                "fov_deg": w["fov_deg"],
                "elevation_deg": w["elevation_deg"],
                "depth_kind": w["depth_kind"],
            },
            "optional": {
                "depth_map": ("IMAGE", {"tooltip": "Any depth node's output for the reference image. Resized to "
                                                   "the image if needed. Without it all objects start at one "
                                                   "depth."}),
            },
        }

    def init(self, meshes, layout, reference_image, fov_deg, elevation_deg, depth_kind, depth_map=None):
        image = _reference_image(reference_image)
        h, w = image.shape[:2]
        if tuple(layout.image_size) != (h, w):
            raise ValueError(f"reference_image: is {w}x{h} but the layout was made on a "
                             f"{layout.image_size[1]}x{layout.image_size[0]} image; feed Segment the same image")
        depth = depth_from_image(depth_map, (h, w), "depth_map") if depth_map is not None else None
        camera = reference_camera(h, w, fov_deg, elevation_deg)
        poses = init_poses(list(meshes), layout, camera, depth, InitSettings(depth_kind=depth_kind))
        names = object_names(layout.phrases, [m.name for m in meshes])
        scene = Scene([SceneObject(n, m, p) for n, m, p in zip(names, meshes, poses)], camera,
                      meta=layout_meta(layout))
        return (scene, _preview(scene))


class SSDSRefine:
    DESCRIPTION = ("Optimises every object's pose (scale, rotation, translation) so the scene matches the "
                   "reference picture (ComboVerse's reference loss), with optional beyond-the-paper terms: a "
                   "silhouette pull that works from any distance, no interpenetration, and objects resting on "
                   "what is under them. Connect a guidance model and a prompt that states the relation ('a teddy "
                   "bear (sitting on:25) a chair') to add ComboVerse's spatially-aware score distillation from "
                   "novel views (L = L_ref + ssds_weight * L_SSDS). Progress shows a preview; Cancel stops within "
                   "one step.")
    CATEGORY = "ComboVerse/combine"
    FUNCTION = "refine"
    RETURN_TYPES = (SCENE, "IMAGE")
    RETURN_NAMES = ("scene", "preview")
    OUTPUT_TOOLTIPS = ("The scene with refined poses.", "The refined scene seen from the reference camera.")
    SETTINGS = {
        "steps": "refine.steps", "parameterization": "refine.parameterization",
        "silhouette_weight": "refine.weights.silhouette", "penetration_weight": "refine.weights.penetration",
        "support_weight": "refine.weights.support", "resolution": "refine.resolution", "backend": "refine.backend",
        "prompt": "ssds.prompt", "ssds_weight": "refine.weights.guidance", "cfg_scale": "ssds.guidance_scale",
        "views_per_step": "ssds.views", "t_min": "ssds.t_range:t_min", "t_max": "ssds.t_range:t_max",
        "reweight_factor": "ssds.reweight", "ssds_resolution": "ssds.render_resolution", "seed": "ssds.seed",
        "guided_steps": "refine.guided_steps", "guidance_every": "refine.guidance_every",
        "stop_tolerance": "refine.stop_tolerance",
    }

    @classmethod
    def INPUT_TYPES(cls):
        w = settings_widgets(cls.SETTINGS)
        return {
            "required": {
                "scene": (SCENE, {"tooltip": "From InitPose."}),
                "reference_image": ("IMAGE", {"tooltip": "The source picture (same as InitPose's)."}),
                "layout": (LAYOUT, {"tooltip": "From Segment: its masks say which pixels belong to which object."}),
                "steps": w["steps"],
                "parameterization": w["parameterization"],
                "silhouette_weight": w["silhouette_weight"],
                "penetration_weight": w["penetration_weight"],
                "support_weight": w["support_weight"],
                "resolution": w["resolution"],
                "backend": w["backend"],
            },
            "optional": {
                "masks": ("MASK", {"tooltip": "Per-object masks [N,H,W] to use instead of the layout's "
                                              "(1 = object). Note: LoadImage's mask is 1 - alpha."}),
                "guidance_model": (GUIDANCE_MODEL, {"tooltip": "From ComboVerse Load Guidance Model. Connect it to "
                                                               "add spatially-aware score distillation (SSDS) from "
                                                               "novel views; without it only the reference view "
                                                               "and the physics terms are fitted."}),
                "prompt": widget("ssds.prompt", multiline=True),
                "ssds_weight": w["ssds_weight"],
                "cfg_scale": w["cfg_scale"],
                "views_per_step": w["views_per_step"],
                "t_min": w["t_min"],
                "t_max": w["t_max"],
                "reweight_factor": w["reweight_factor"],
                "ssds_resolution": w["ssds_resolution"],
                "seed": w["seed"],
                "guided_steps": w["guided_steps"],
                "guidance_every": w["guidance_every"],
                "stop_tolerance": w["stop_tolerance"],
            },
        }

    # Optional inputs left out of a call take the settings' own defaults (one source: SSDSSettings,
    # LossWeights), as the widgets do.
    def refine(self, scene, reference_image, layout, steps, parameterization, silhouette_weight,
               penetration_weight, support_weight, resolution, backend, masks=None, guidance_model=None, prompt="",
               ssds_weight=LossWeights.guidance, cfg_scale=SSDSSettings.guidance_scale,
               views_per_step=SSDSSettings.views, t_min=SSDSSettings.t_range[0], t_max=SSDSSettings.t_range[1],
               reweight_factor=SSDSSettings.reweight, ssds_resolution=SSDSSettings.render_resolution,
               seed=SSDSSettings.seed, guided_steps=RefineSettings.guided_steps,
               guidance_every=RefineSettings.guidance_every, stop_tolerance=RefineSettings.stop_tolerance):
        image = _reference_image(reference_image)
        masks = masks if masks is not None else layout.masks
        if masks is None:
            raise ValueError("layout: has no masks; run Segment, or connect per-object masks to 'masks'")
        if masks.ndim != 3 or masks.shape[0] != len(scene.objects) or tuple(masks.shape[1:]) != image.shape[:2]:
            raise ValueError(f"masks: expected [{len(scene.objects)}, {image.shape[0]}, {image.shape[1]}] (one per "
                             f"object, image size), got {tuple(masks.shape)}")
        use_guidance = guidance_model is not None and ssds_weight > 0
        if use_guidance and not prompt.strip():  # before any model moves or runs
            raise ValueError("ComboVerse SSDSRefine: prompt: expected a text that states how the objects relate, "
                             "e.g. 'a teddy bear (sitting on:25) a chair', because a guidance_model is connected "
                             "(score distillation needs it); got an empty prompt. Type the relation into 'prompt', "
                             "or disconnect or bypass the guidance model (or set ssds_weight 0) to refine without it")
        settings = RefineSettings(steps=steps, guided_steps=guided_steps, guidance_every=guidance_every,
                                  stop_tolerance=stop_tolerance, resolution=resolution,
                                  parameterization=parameterization, backend=backend, weights=replace(LossWeights(), silhouette=silhouette_weight,
                                                                   penetration=penetration_weight,
                                                                   support=support_weight,
                                                                   guidance=ssds_weight if use_guidance else 0.0))
        guidance, out_device = None, None
        if use_guidance:
            try:
                ssds = SSDSSettings(prompt=prompt, reweight=reweight_factor, guidance_scale=cfg_scale,
                                    views=views_per_step, t_range=(t_min, t_max), render_resolution=ssds_resolution,
                                    seed=seed, backend=backend)
            except ValueError as e:
                raise ValueError(f"ComboVerse SSDSRefine: {e}") from None
            device = host.use_models([guidance_model.modules()])
            out_device = host.intermediate_device()
            scene = scene.to(device)  # render where the diffusion model runs
            try:
                guidance = SSDSGuidance(guidance_model, ssds)
            except ValueError as e:
                raise ValueError(f"ComboVerse SSDSRefine: {e}") from None
        try:
            result = refine_poses(scene, RefineTargets.from_masks(image, masks.float()), settings,
                                  callback=Progress(max(1, settings.steps_for(use_guidance))), guidance=guidance)
        finally:
            if guidance is not None:
                guidance.close()  # ComfyUI's cached model goes back as it was found
        final = result.scene if out_device is None else result.scene.to(out_device)
        return (final, _preview(final))
