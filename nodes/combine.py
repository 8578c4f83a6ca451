"""ComboVerse InitPose and SSDSRefine: compose the objects into one scene (METHOD.md Stage 2)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..comboverse_ops.compose.init_pose import (
    DEPTH_KINDS,
    InitSettings,
    depth_from_image,
    init_poses,
    reference_camera,
)
from ..comboverse_ops.types.layout import layout_meta
from ..comboverse_ops.compose.refine import (
    PARAMETERIZATIONS,
    LossWeights,
    RefineSettings,
    RefineTargets,
    refine_poses,
)
from ..comboverse_ops.render import BACKENDS, render_scene
from ..comboverse_ops.types.scene import Scene, SceneObject
from ..comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings
from . import host
from .host import GUIDANCE_MODEL, LAYOUT, MESHES, SCENE, Progress


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

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "meshes": (MESHES, {"tooltip": "One mesh per object in the canonical frame (Lift3D, or Meshes From "
                                               "MESH), in the layout's order."}),
                "layout": (LAYOUT, {"tooltip": "Boxes, phrases and masks of the objects (Segment)."}),
                "reference_image": ("IMAGE", {"tooltip": "The source picture the layout was made on."}),
                "fov_deg": ("FLOAT", {"default": 40.0, "min": 5.0, "max": 120.0, "step": 0.5,
                                      "tooltip": "Vertical field of view of the camera that took the picture."}),
                "elevation_deg": ("FLOAT", {"default": -15.0, "min": -89.0, "max": 89.0, "step": 0.5,
                                            "tooltip": "Camera elevation, kiui's convention: NEGATIVE looks down "
                                                       "from above (-15 = a table seen from slightly above)."}),
                "depth_kind": (list(DEPTH_KINDS), {"default": "disparity",
                                                   "tooltip": "What the depth map holds: disparity (bright = near; "
                                                              "Depth Anything, MiDaS) or depth (bright = far)."}),
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
        names = _unique_names(layout, meshes)
        scene = Scene([SceneObject(n, m, p) for n, m, p in zip(names, meshes, poses)], camera,
                      meta=layout_meta(layout))
        return (scene, _preview(scene))


def _unique_names(layout, meshes) -> list[str]:
    names = []
    for i, (phrase, mesh) in enumerate(zip(layout.phrases, meshes)):
        base = (phrase or mesh.name or "object").strip().replace(" ", "_") or "object"
        name = base if base not in names else f"{base}_{i}"
        names.append(name)
    return names


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

    @classmethod
    def INPUT_TYPES(cls):
        d = RefineSettings()
        w = LossWeights()
        g = SSDSSettings()
        return {
            "required": {
                "scene": (SCENE, {"tooltip": "From InitPose."}),
                "reference_image": ("IMAGE", {"tooltip": "The source picture (same as InitPose's)."}),
                "layout": (LAYOUT, {"tooltip": "From Segment: its masks say which pixels belong to which object."}),
                "steps": ("INT", {"default": d.steps, "min": 0, "max": 5000,
                                  "tooltip": "Optimisation steps."}),
                "parameterization": (list(PARAMETERIZATIONS), {"default": d.parameterization,
                                     "tooltip": "ray: depth slides each object along its viewing ray (keeps the "
                                                "reference view; physics decides depth). camera: the paper's."}),
                "silhouette_weight": ("FLOAT", {"default": w.silhouette, "min": 0.0, "max": 1e6, "step": 10.0,
                                                "tooltip": "Pull of each object towards its mask from any "
                                                           "distance (0 = off)."}),
                "penetration_weight": ("FLOAT", {"default": w.penetration, "min": 0.0, "max": 1e8, "step": 1000.0,
                                                 "tooltip": "Penalty on objects reaching into each other (0 = off)."}),
                "support_weight": ("FLOAT", {"default": w.support, "min": 0.0, "max": 1e8, "step": 1000.0,
                                             "tooltip": "Pull of each object onto the ground or the object under "
                                                        "it (0 = off; off for floating things)."}),
                "resolution": ("INT", {"default": d.resolution, "min": 32, "max": 1024, "step": 16,
                                       "tooltip": "Longer side of the reference render, in pixels."}),
                "backend": (list(BACKENDS), {"default": "auto",
                                             "tooltip": "Renderer: auto uses nvdiffrast on a GPU where installed."}),
            },
            "optional": {
                "masks": ("MASK", {"tooltip": "Per-object masks [N,H,W] to use instead of the layout's "
                                              "(1 = object). Note: LoadImage's mask is 1 - alpha."}),
                "guidance_model": (GUIDANCE_MODEL, {"tooltip": "From ComboVerse Load Guidance Model. Connect it to "
                                                               "add spatially-aware score distillation (SSDS) from "
                                                               "novel views; without it only the reference view "
                                                               "and the physics terms are fitted."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "States the relation, e.g. 'a teddy bear (sitting on:25) a chair'. "
                                                 "Words in (words:factor) get their cross-attention multiplied by "
                                                 "factor; with nothing marked, relation words (on, under, behind, "
                                                 "in front of, riding, ...) are found automatically."}),
                "ssds_weight": ("FLOAT", {"default": w.guidance, "min": 0.0, "max": 1e6, "step": 0.1,
                                          "tooltip": "lambda_SSDS (paper: 1). 0 switches the guidance off."}),
                "cfg_scale": ("FLOAT", {"default": g.guidance_scale, "min": 0.0, "max": 200.0, "step": 0.5,
                                        "tooltip": "Classifier-free guidance scale of the score distillation "
                                                   "(100: DreamFusion's and the re-implementation's)."}),
                "views_per_step": ("INT", {"default": g.views, "min": 1, "max": 64,
                                           "tooltip": "Novel views rendered per step (paper: 10). 4 guided layouts "
                                                      "as well as 10 within noise on 40 benchmark scenes "
                                                      "(docs/ssds_effect.md) and keep a 200-step refine near 30 s "
                                                      "on an H200 within 12 GB; 10 take 2.6x as long."}),
                "t_min": ("FLOAT", {"default": g.t_range[0], "min": 0.02, "max": 0.98, "step": 0.01,
                                    "tooltip": "Lowest diffusion time, fraction of T (paper: 0.8)."}),
                "t_max": ("FLOAT", {"default": g.t_range[1], "min": 0.02, "max": 0.98, "step": 0.01,
                                    "tooltip": "Highest diffusion time, fraction of T (paper: 0.9)."}),
                "reweight_factor": ("FLOAT", {"default": g.reweight, "min": 0.01, "max": 1000.0, "step": 0.5,
                                              "tooltip": "Default attention multiplier c of the spatial words "
                                                         "(paper: 25; 1 = plain SDS)."}),
                "ssds_resolution": ("INT", {"default": g.render_resolution, "min": 64, "max": 1024, "step": 32,
                                            "tooltip": "Render size of the novel views (upsampled to the model's "
                                                       "512 or 768)."}),
                "seed": ("INT", {"default": g.seed, "min": 0, "max": 2**63 - 1,
                                 "tooltip": "Seed of the novel views, timesteps and noise."}),
            },
        }

    # Optional inputs left out of a call take the settings' own defaults (one source: SSDSSettings,
    # LossWeights), as the widgets do.
    def refine(self, scene, reference_image, layout, steps, parameterization, silhouette_weight,
               penetration_weight, support_weight, resolution, backend, masks=None, guidance_model=None, prompt="",
               ssds_weight=LossWeights.guidance, cfg_scale=SSDSSettings.guidance_scale,
               views_per_step=SSDSSettings.views, t_min=SSDSSettings.t_range[0], t_max=SSDSSettings.t_range[1],
               reweight_factor=SSDSSettings.reweight, ssds_resolution=SSDSSettings.render_resolution,
               seed=SSDSSettings.seed):
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
        settings = RefineSettings(steps=steps, resolution=resolution, parameterization=parameterization,
                                  backend=backend, weights=replace(LossWeights(), silhouette=silhouette_weight,
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
                                  callback=Progress(max(1, steps)), guidance=guidance)
        finally:
            if guidance is not None:
                guidance.close()  # ComfyUI's cached model goes back as it was found
        final = result.scene if out_device is None else result.scene.to(out_device)
        return (final, _preview(final))
