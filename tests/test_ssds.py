"""SSDS guidance: a tiny random SD model saved as a real single-file checkpoint, loaded by the loader node."""

from dataclasses import replace

import pytest
import torch
from tiny_models import node_class, save_tiny_sd


from comboverse_ops import Pose
from comboverse_ops.compose.init_pose import init_poses
from comboverse_ops.types.layout import Layout
from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
from comboverse_ops.compose.refine import (
    LossWeights,
    RefineSettings,
    RefineTargets,
    refine_poses,
)
from comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings, sds_loss

import diffusers, transformers  # noqa: F401,E402  (declared dependencies: fail loudly, never skip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead

SIZE = 64
PROMPT = "a red box (on top of:25) a blue box"
FAST = {"prompt": PROMPT, "views": 2, "render_resolution": 32, "backend": "torch"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(checkpoint, config_dir)`` of a tiny SD1 text-to-image and a tiny SD2 inpainting model."""
    root = tmp_path_factory.mktemp("ssds")
    t2i = save_tiny_sd(root / "t2i", "sd1", inpainting=False)
    inp = save_tiny_sd(root / "inp", "sd2", inpainting=True)
    return {"text2img": t2i[:2], "inpainting": inp[:2]}


@pytest.fixture(scope="module")
def model(pack, tiny):
    loader = node_class(pack, "guidance", "LoadGuidanceModel")
    path, cfg = tiny["text2img"]
    (m,) = loader().load(str(path), config_dir=str(cfg))
    return m


@pytest.fixture(scope="module")
def observed():
    proc = make_procedural_scene(3, ProceduralSettings(min_objects=2, max_objects=2, image_size=SIZE,
                                                       faces_per_object=200))
    obs = proc.observe()
    layout = Layout(obs.boxes, (SIZE, SIZE), proc.phrases, obs.masks)
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    return start, obs, layout


def test_the_loader_gives_a_frozen_text_to_image_model_and_the_guidance_marks_the_relation(model):
    g = SSDSGuidance(model, SSDSSettings(**FAST))
    assert model.info.family == "sd1" and not model.info.inpainting
    assert model.dtype == (torch.float16 if model.device.type == "cuda" else torch.float32)  # precision "auto"
    assert [p.text for p in g.prompt.phrases] == ["on top of"] and g.layers
    assert g.model_resolution == 32  # tiny UNet 16 latents x VAE factor 2 (SD 1.5: 64 x 8 = 512)


def test_sds_loss_has_the_sds_gradient():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g).requires_grad_()
    eps, noise, w = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), torch.rand(3)
    sds_loss(z, eps, noise, w).backward()
    assert torch.allclose(z.grad, w.reshape(-1, 1, 1, 1) * (eps - noise) / 3, atol=1e-6)


def test_gradients_reach_every_pose_parameter_and_never_the_model(model, observed):
    start, _, _ = observed
    poses = [Pose(p.scale.clone().requires_grad_(), p.rotation.clone().requires_grad_(),
                  p.translation.clone().requires_grad_()) for p in start.poses]
    scene = start.with_poses(poses)
    loss = SSDSGuidance(model, SSDSSettings(**FAST))(scene, 0)["loss_ssds"]
    loss.backward()
    assert torch.isfinite(loss)
    for p in poses:
        for t in (p.scale, p.rotation, p.translation):
            assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.modules().parameters())


def test_encoding_the_views_in_chunks_gives_the_one_batch_loss_and_gradients(model, observed):
    """The memory saving (VAE activations of a few views at a time) changes no number."""
    start, _, _ = observed

    def step(chunk):
        poses = [Pose(p.scale.clone().requires_grad_(), p.rotation.clone().requires_grad_(),
                      p.translation.clone().requires_grad_()) for p in start.poses]
        loss = SSDSGuidance(model, SSDSSettings(**(FAST | {"views": 5, "encode_chunk": chunk})))(
            start.with_poses(poses), 0)["loss_ssds"]
        loss.backward()
        return loss.detach(), torch.cat([torch.cat([p.scale.grad, p.rotation.grad, p.translation.grad])
                                         for p in poses])

    whole, g_whole = step(0)
    for chunk in (1, 2):
        loss, g = step(chunk)
        assert torch.allclose(loss, whole, rtol=1e-4), (chunk, loss, whole)
        assert torch.allclose(g, g_whole, rtol=1e-3, atol=1e-6 * g_whole.abs().max()), (chunk, g, g_whole)
    assert g_whole.abs().sum() > 0


def test_plain_sds_is_the_same_step_without_reweighting(model, observed):
    start, _, _ = observed
    ssds = SSDSGuidance(model, SSDSSettings(**FAST))(start, 0)["loss_ssds"]
    plain_g = SSDSGuidance(model, SSDSSettings(**(FAST | {"prompt": "a red box on top of a blue box",
                                                          "reweight": 1.0})))
    assert plain_g.plain and not plain_g.layers
    plain = plain_g(start, 0)["loss_ssds"]
    again = SSDSGuidance(model, SSDSSettings(**FAST))(start, 0)["loss_ssds"]
    assert torch.isfinite(plain) and float(plain) != float(ssds) and float(again) == float(ssds)


def _refine(scene, obs, model, steps, seed=0, **weights):
    settings = RefineSettings(steps=steps, guided_steps=0, guidance_every=1, resolution=32, backend="torch",
                              weights=replace(LossWeights(), **weights))
    guidance = SSDSGuidance(model, SSDSSettings(**FAST, seed=seed))
    return refine_poses(scene, RefineTargets.from_masks(obs.image, obs.masks), settings, guidance=guidance)


def test_refine_with_guidance_stays_finite_for_20_steps_and_is_deterministic(model, observed):
    start, obs, _ = observed
    result = _refine(start, obs, model, 20)
    assert len(result.history) == 20
    assert all("guidance_ssds" in h and torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    # The guidance alone moves the poses; the same seed gives the same poses, another seed others.
    a = _refine(start, obs, model, 3, ref_rgb=0, ref_alpha=0, silhouette=0, penetration=0, support=0)
    b = _refine(start, obs, model, 3, ref_rgb=0, ref_alpha=0, silhouette=0, penetration=0, support=0)
    c = _refine(start, obs, model, 3, seed=1, ref_rgb=0, ref_alpha=0, silhouette=0, penetration=0, support=0)
    flat = lambda r: torch.cat([torch.cat([p.scale, p.rotation, p.translation]) for p in r.scene.poses])
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))
    assert not torch.allclose(flat(a), torch.cat([torch.cat([p.scale, p.rotation, p.translation])
                                                  for p in start.poses]))


def test_refine_with_guidance_works_on_models_and_inputs_made_in_inference_mode(pack, tiny, observed):
    from comboverse_ops.models import MODEL_CACHE

    start, obs, _ = observed
    path, cfg = tiny["text2img"]
    loader = node_class(pack, "guidance", "LoadGuidanceModel")
    MODEL_CACHE.clear()
    with torch.inference_mode():  # what ComfyUI does around every node
        (m,) = loader().load(str(path), config_dir=str(cfg))
        m.modules()._apply(lambda t: t.clone())  # what ComfyUI's load_models_gpu (a .to(device)) does in there
        assert all(p.is_inference() for p in m.modules().parameters())
        scene = start.with_poses([Pose(p.scale.clone(), p.rotation.clone(), p.translation.clone())
                                  for p in start.poses])
        image, masks = obs.image.clone(), obs.masks.clone()
        result = _refine(scene, type(obs)(**{**obs.__dict__, "image": image, "masks": masks}), m, 2)
    MODEL_CACHE.clear()
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)


def test_the_refine_node_takes_the_guidance_as_optional_inputs(pack, model, observed):
    start, obs, layout = observed
    node = node_class(pack, "combine", "SSDSRefine")
    spec = node.INPUT_TYPES()
    assert {"guidance_model", "prompt", "ssds_weight", "cfg_scale", "views_per_step", "t_min", "t_max",
            "reweight_factor", "seed"} <= set(spec["optional"])
    image = obs.image[None]
    args = (start, image, layout, 2, "ray", 1000.0, 1e5, 1e4, 32, "torch")
    with torch.inference_mode():
        scene, preview = node().refine(*args, guidance_model=model, prompt=PROMPT, views_per_step=2,
                                       ssds_resolution=64)
    assert preview.shape == (1, SIZE, SIZE, 3) and len(scene.objects) == len(start.objects)
    with pytest.raises(ValueError, match="SSDSRefine.*t_range"):
        node().refine(*args, guidance_model=model, prompt=PROMPT, t_min=0.9, t_max=0.5)
    with pytest.raises(ValueError, match="SSDSRefine.*prompt"):
        node().refine(*args, guidance_model=model, prompt="")


def test_the_guidance_loader_refuses_other_models_with_what_they_are(pack, tiny, tmp_path):
    from safetensors.torch import save_file

    loader = node_class(pack, "guidance", "LoadGuidanceModel")
    ipath, icfg = tiny["inpainting"]
    with pytest.raises(ValueError, match="Load Guidance Model.*inpainting.*expected an SD 1.x/2.x text-to-image"):
        loader().load(str(ipath), config_dir=str(icfg))
    inpaint_loader = node_class(pack, "loaders", "LoadInpaintModel")
    tpath, tcfg = tiny["text2img"]
    with pytest.raises(ValueError, match="text-to-image.*inpainting needs"):
        inpaint_loader().load(str(tpath), config_dir=str(tcfg))
    for keys, what in [({"conditioner.embedders.1.model.token_embedding.weight": (8, 4),
                         "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "SDXL"),
                       ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "Flux"),
                       ({"something.else": (4,)}, "unknown model")]:
        p = tmp_path / f"{what}.safetensors"
        save_file({k: torch.zeros(s) for k, s in keys.items()}, str(p))
        with pytest.raises(ValueError, match=f"Load Guidance Model.*{what}"):
            loader().load(str(p))
    with pytest.raises(FileNotFoundError, match="Load Guidance Model.*models/checkpoints"):
        loader().load("no-such-model.safetensors")


def test_the_refine_node_gives_comfyuis_cached_model_back_as_it_found_it(pack, tiny, observed):
    # The guidance model is shared (ComfyUI's cache): after SSDSRefine, the next node that uses it
    # (a KSampler, another refine) must find the same attention processors, tensors and flags.
    from comboverse_ops.models import MODEL_CACHE

    start, obs, layout = observed
    path, cfg = tiny["text2img"]
    MODEL_CACHE.clear()
    with torch.inference_mode():  # ComfyUI loads and runs every node in inference mode
        (m,) = node_class(pack, "guidance", "LoadGuidanceModel")().load(str(path), config_dir=str(cfg))
    processors = dict(m.unet.attn_processors)
    tensors = {k: t for k, t in m.modules().state_dict(keep_vars=True).items()}
    flags = {k: t.requires_grad for k, t in tensors.items()}
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 77, m.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = m.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
        node_class(pack, "combine", "SSDSRefine")().refine(start, obs.image[None], layout, 2, "ray", 1000.0, 1e5,
                                                           1e4, 32, "torch", guidance_model=m, prompt=PROMPT,
                                                           views_per_step=2, ssds_resolution=64)
        after = m.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
    assert all(m.unet.attn_processors[k] is p for k, p in processors.items())
    now = m.modules().state_dict(keep_vars=True)
    assert all(now[k] is t for k, t in tensors.items()), "the VAE's tensors were swapped and not put back"
    assert {k: t.requires_grad for k, t in now.items()} == flags
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # A guidance that fails while it is being set up (a layer filter matching nothing) changes nothing either.
    with pytest.raises(ValueError, match="layer filter"):
        SSDSGuidance(m, SSDSSettings(**{**FAST, "layer_filter": "no_such_layer"}))
    assert all(m.unet.attn_processors[k] is p for k, p in processors.items())
    assert all(m.modules().state_dict(keep_vars=True)[k] is t for k, t in tensors.items())
    MODEL_CACHE.clear()
