"""Spatially-aware score distillation (SSDS, METHOD.md) as a guidance for :func:`.refine.refine_poses`.

Every refine step, :class:`SSDSGuidance` renders the posed scene from ``views`` novel cameras
around the reference camera (:class:`ViewSampling`), upsamples the renders to the model's
resolution, encodes them with the VAE (with gradients), and asks the text-to-image UNet, with the
spatial tokens' cross-attention multiplied by ``c`` (:mod:`.attention`), how to denoise them:

    z = E(render),  t ~ U[t_min, t_max] * T,  z_t = sqrt(a_t) z + sqrt(1 - a_t) eps
    eps_hat = eps_u + s (eps_c - eps_u)                        (classifier-free guidance, scale s)
    L_SSDS = 0.5 * || z - sg[z - w(t) (eps_hat - eps)] ||^2 / views

The gradient of ``L_SSDS`` w.r.t. ``z`` is ``w(t) (eps_hat - eps)``: DreamFusion's SDS gradient,
written as an MSE against a detached target (threestudio's form). It flows through the VAE
encoder and the renderer to the poses only: no gradient ever reaches the diffusion model's
weights (they are frozen, and the UNet runs under ``no_grad``).

Defaults: ``c = 25`` and ``t in [0.8, 0.9] T`` (paper); ``s = 100`` (DreamFusion's SDS scale, also
the known re-implementation's: SDS needs a far larger scale than sampling, because one noisy
prediction per step must carry the prompt's layout, and small scales give weak, blurry,
mode-averaging gradients); ``w(t) = 1 - a_t`` (DreamFusion's ``sigma_t^2``; nearly constant
inside the high-noise band, ``"uniform"`` is the alternative); 4 views per step (paper: 10; 10 views
cost 2.6x the time of 4 and, in one batch, 18 GiB: README, "Speed and memory").
``reweight = 1`` is plain SDS (ablation).

Memory: the VAE encoder's activations, kept for the backward pass at the model's 512 pixels, are
what fills the GPU (about 1.7 GiB per view in fp16). With more than ``encode_chunk`` views, the
renders are first encoded without a graph and the UNet scores all views in one pass; then each
chunk of views is encoded again, with a graph, and its SDS gradient pushed back to the renders
at once, so only one chunk's activations are alive. The renderer's backward to the poses runs
once, in :func:`.refine.refine_poses`. Same numbers as one batch (the noise, timesteps and views
are drawn for all views first), one extra VAE forward, a fraction of the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import install_spatial_attention, remove_spatial_attention
from ..types.camera import Cameras
from ..determinism import ordered_sum, serial_bilinear
from ..render import BACKENDS, render_scene
from ..types.scene import Scene
from ..settings import setting, settings_class
from .spatial_tokens import SpatialPrompt, parse_spatial_prompt

__all__ = [
    "WEIGHTINGS",
    "SSDSGuidance",
    "SSDSSettings",
    "ViewSampling",
    "reference_orbit",
    "sample_views",
    "sds_loss",
]

WEIGHTINGS = ("sds", "uniform")


@settings_class
@dataclass(frozen=True)
class ViewSampling:
    """Where the novel views are, relative to the reference camera (kiui's orbit angles).

    Each view orbits the scene centre (the mean object position) at the reference camera's
    distance times ``radius_scale``; its azimuth and elevation are the reference camera's plus
    offsets drawn uniformly from these ranges. Negative elevation = from above.
    """

    # choice: the half orbit on the photo's side, where the single-view 3D models are best; the relation
    # stays visible from there
    azimuth_offset_deg: tuple[float, float] = setting(
        (-90.0, 90.0), "Range of the novel views' azimuth offsets from the reference view, degrees.", lo=-180.0,
        hi=180.0, source="choice", parts={"azimuth_min": "", "azimuth_max": ""})
    # choice: mostly higher than the photo (tables, supports seen from above), a little lower
    elevation_offset_deg: tuple[float, float] = setting(
        (-20.0, 10.0), "Range of the novel views' elevation offsets, degrees (negative = from above).", lo=-90.0,
        hi=90.0, source="choice", parts={"elevation_min": "", "elevation_max": ""})
    # choice: the reference distance, so the framing matches
    radius_scale: tuple[float, float] = setting(
        (1.0, 1.0), "Range of the novel views' distance as a multiple of the reference camera's.", lo=0.1, hi=10.0,
        source="choice", parts={"radius_min": "", "radius_max": ""})
    fov_deg: float | None = setting(None, "Novel views' vertical field of view, degrees (none: the reference "
                                          "camera's).", lo=1.0, hi=170.0, source="choice")


@settings_class
@dataclass(frozen=True)
class SSDSSettings:
    """Settings of :class:`SSDSGuidance` (module doc for the defaults)."""

    prompt: str = setting("", "States the relation, e.g. 'a teddy bear (sitting on:25) a chair'. Words in "
                              "(words:factor) get their cross-attention multiplied by factor; with nothing marked, "
                              "relation words (on, under, behind, in front of, riding, ...) are found automatically.",
                          source="choice", flag=False)
    reweight: float = setting(25.0, "Default attention multiplier c of the spatial words (paper: 25; 1 = plain SDS).",
                              lo=0.01, hi=1000.0, step=0.5, source="paper")
    renormalize: bool = setting(False, "Renormalise the attention after reweighting (the known re-implementation "
                                       "does not).", source="paper")
    layer_filter: str = setting("attn2", "Regex over the UNet's attention processor names that get the "
                                         "reweighting; attn2 = every cross-attention layer.", source="paper")
    auto_relation_words: bool = setting(True, "Mark relation words automatically when the prompt marks nothing.",
                                        source="choice")
    # paper: the high-noise band decides the global layout
    t_range: tuple[float, float] = setting((0.8, 0.9), "Band of diffusion times, fractions of T (paper: 0.8 0.9).",
                                           lo=0.02, hi=0.98, step=0.01, source="paper",
                                           parts={"t_min": "Lowest diffusion time, fraction of T (paper: 0.8).",
                                                  "t_max": "Highest diffusion time, fraction of T (paper: 0.9)."})
    guidance_scale: float = setting(100.0, "Classifier-free guidance scale of the score distillation (100: "
                                           "DreamFusion's and the re-implementation's).", lo=0.0, hi=200.0, step=0.5,
                                    source="paper")
    weighting: str = setting("sds", "w(t): sds = 1 - alpha_bar_t (DreamFusion), uniform = 1.", choices=WEIGHTINGS,
                             source="paper")
    # paper: 10 novel views per iteration; 4 keeps the pipeline within 60 s and 12 GB (module doc)
    views: int = setting(4, "Novel views rendered per step (paper: 10). 4 guided layouts as well as 10 within noise "
                            "on 40 benchmark scenes (docs/ssds_effect.md) and keep a 200-step refine near 30 s on an "
                            "H200 within 12 GB; 10 take 2.6x as long.", lo=1, hi=64, source="measured")
    # choice: renders upsampled to the model's resolution (512 for SD 1.5)
    render_resolution: int = setting(256, "Render size of the novel views, pixels (upsampled to the model's 512 or "
                                          "768).", lo=16, hi=1024, step=32, source="choice")
    model_resolution: int | None = setting(None, "Resolution the diffusion model sees (none: the UNet's native "
                                                 "size).", lo=64, hi=2048, source="upstream")
    view_sampling: ViewSampling = setting(factory=ViewSampling, help="Where the novel views are.")
    seed: int = setting(0, "Seed of the novel views, timesteps and noise.", lo=0, hi=2**63 - 1, source="choice",
                        flag=False)
    backend: str = setting("auto", "Renderer: auto uses nvdiffrast on a GPU where installed.", choices=BACKENDS,
                           source="choice")
    # module doc, "Memory"
    encode_chunk: int = setting(4, "Views per VAE encode with gradients (0: all views at once); memory only.", lo=0,
                                source="choice")

    def __post_init__(self):
        # Ranges and choices are checked from the fields (settings_class); here what joins two values.
        lo, hi = self.t_range
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"t_range: expected 0 < t_min <= t_max < 1 (fractions of T), got {self.t_range}")


def _orbit(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(elevation_deg, azimuth_deg, radius, centre [3])`` of the reference camera about the scene
    centre (the mean object position), as tensors on the scene's device: float64, or float32 on
    MPS (which has no float64). Nothing is read back, so a refine step never waits here."""
    cam = scene.camera
    dt = torch.float32 if cam.device.type == "mps" else torch.float64
    centre = torch.stack([o.pose.translation.detach() for o in scene.objects]).to(dt).mean(0)
    off = cam.c2w[0, :3, 3].detach().to(dt) - centre
    radius = torch.linalg.norm(off).clamp_min(1e-6)
    elevation = -torch.rad2deg(torch.asin((off[1] / radius).clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(off[0], off[2]))
    return elevation, azimuth, radius, centre


def reference_orbit(scene: Scene) -> tuple[float, float, float, torch.Tensor]:
    """:func:`_orbit` read back in one copy: ``(elevation_deg, azimuth_deg, radius, centre)``,
    the first three as floats, ``centre`` a float64 CPU tensor."""
    el, az, r, centre = _orbit(scene)
    both = torch.cat([torch.stack([el, az, r]), centre]).cpu().double()
    return float(both[0]), float(both[1]), float(both[2]), both[3:]


def sample_views(scene: Scene, n: int, resolution: int, sampling: ViewSampling,
                 generator: torch.Generator) -> Cameras:
    """``n`` square cameras of ``resolution`` pixels around the reference camera (:class:`ViewSampling`).

    The offsets come from ``generator`` (CPU); the orbit about the scene is computed on the
    scene's device (:func:`_orbit`), so that a refine step never waits for the GPU here."""
    cam = scene.camera
    el0, az0, r0, centre = _orbit(scene)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    ranges = (sampling.elevation_offset_deg, sampling.azimuth_offset_deg, sampling.radius_scale)
    lo = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
    draw = lo + (hi - lo) * u  # [n, 3]: elevation offset, azimuth offset, radius scale
    if cam.device.type == "cuda":
        draw = draw.pin_memory()
    draw = draw.to(cam.device, centre.dtype, non_blocking=True)
    el = (el0 + draw[:, 0]).clamp(-89.0, 89.0)
    az = az0 + draw[:, 1]
    r = r0 * draw[:, 2]
    return Cameras.orbit_like(cam, el.float(), az.float(), r.float(), centre.float(), fov_y_deg=sampling.fov_deg,
                              width=resolution, height=resolution)


def sds_loss(latents: torch.Tensor, eps_pred: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SDS as an MSE against a detached target (threestudio's form).

    Args:
        latents: ``[B, 4, h, w]`` float, with gradients.
        eps_pred: ``[B, 4, h, w]`` the guided noise prediction (no gradients).
        noise: ``[B, 4, h, w]`` the noise that was added.
        weight: ``[B]`` w(t).
    Returns:
        scalar; its gradient w.r.t. ``latents`` is ``weight * (eps_pred - noise) / B``.
    """
    grad = torch.nan_to_num(weight.reshape(-1, 1, 1, 1) * (eps_pred.float() - noise.float()))
    target = (latents.float() - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]


def _normal_tensors(module: torch.nn.Module) -> list[tuple[dict, str, torch.Tensor]]:
    """Replace inference-mode weights (ComfyUI loads under ``torch.inference_mode()``) by normal,
    frozen copies, so that autograd may save them for the backward pass to the input.

    Returns ``(dict, name, original)`` for every tensor replaced, to put the originals back."""
    swapped = []
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_inference():
                    swapped.append((m._parameters, name, p))
                    m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_inference():
                    swapped.append((m._buffers, name, b))
                    m._buffers[name] = b.clone()
    return swapped


class SSDSGuidance:
    """``guidance(scene, step) -> {"loss_ssds": loss}`` for :func:`.refine.refine_poses` (module doc).

    While it lives, the model is prepared for it: weights frozen, the cross-attention processors
    matching ``settings.layer_filter`` replaced by the spatial-token processor (stock-equivalent
    while no weights are set), and the VAE's inference-mode tensors by normal copies. The model
    is usually shared (ComfyUI's cache, the CLI's), so use it as a context manager, or call
    :meth:`close`: that gives the model back as it was found (processors, ``requires_grad``
    flags and tensors)::

        with SSDSGuidance(model, settings) as guidance:
            refine_poses(scene, targets, refine_settings, guidance=guidance)

    Args:
        model: a text-to-image :class:`~.models.sd.SDModel` (4-channel UNet).
        settings: :class:`SSDSSettings`.
    """

    def __init__(self, model, settings: SSDSSettings):
        if getattr(model.unet.config, "in_channels", 4) != 4:
            raise ValueError(f"guidance model: expected a text-to-image SD model (4-channel UNet), got a "
                             f"{model.unet.config.in_channels}-channel UNet; load it with ComboVerse Load Guidance "
                             "Model")
        self.model, self.settings = model, settings
        self.device = model.device
        self.dtype = model.dtype
        modules = model.modules()
        self._grad_flags = [(p, p.requires_grad) for p in modules.parameters()]
        self._processors = dict(model.unet.attn_processors)
        self._swapped: list = []
        try:
            with torch.inference_mode(False):
                modules.requires_grad_(False)
                # the encoder must be usable with gradients flowing to its input
                self._swapped = _normal_tensors(model.vae)
                self.prompt: SpatialPrompt = parse_spatial_prompt(settings.prompt, model.tokenizer, settings.reweight,
                                                                  auto=settings.auto_relation_words, what="prompt")
                uncond = model.tokenizer("", padding="max_length", max_length=self.prompt.input_ids.shape[0],
                                         truncation=True, return_tensors="pt").input_ids
                ids = torch.cat([uncond, self.prompt.input_ids[None]]).to(self.device)
                with torch.no_grad():
                    emb = model.text_encoder(ids)[0]
                self.uncond_emb, self.cond_emb = emb[:1].to(self.dtype).clone(), emb[1:].to(self.dtype).clone()
                self.alphas_cumprod = _alphas_cumprod(model.scheduler_config).to(self.device)
            self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
            self.prediction_type = model.scheduler_config.get("prediction_type", "epsilon")
            self.plain = settings.reweight == 1.0 and not any(p.factor != 1.0 for p in self.prompt.phrases)
            if self.plain:
                remove_spatial_attention(model.unet)
                self.layers: list[str] = []
            else:
                self.layers = install_spatial_attention(model.unet, settings.layer_filter, settings.renormalize)
            vae_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
            self.model_resolution = settings.model_resolution or int(model.unet.config.sample_size) * vae_factor
            self.generator = torch.Generator().manual_seed(int(settings.seed))
        except BaseException:  # a bad prompt or layer filter: the model goes back as it was
            self.close()
            raise

    def close(self) -> None:
        """Give the model back as it was found (class doc). Idempotent."""
        if self._processors is None:
            return
        self.model.unet.set_attn_processor(self._processors)
        for holder, name, original in reversed(self._swapped):
            holder[name] = original
        for p, flag in self._grad_flags:
            if not p.is_inference():  # inference tensors cannot change flags, and never had them set
                p.requires_grad_(flag)
        self._processors, self._swapped, self._grad_flags = None, [], []

    def __enter__(self) -> "SSDSGuidance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------

    def encode(self, rgb_bhwc: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` float in [0, 1] -> ``[B, 4, h, w]`` scaled latents (VAE mean), differentiable."""
        # NCHW-contiguous: channels-last makes the VAE's group_norm depend on the thread count
        x = rgb_bhwc.permute(0, 3, 1, 2).contiguous().to(self.device)
        res = self.model_resolution
        if x.shape[-2:] != (res, res):
            with serial_bilinear():
                x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).to(self.dtype)
        vae = self.model.vae
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Classifier-free-guided noise prediction ``[B, 4, h, w]`` (no gradients), spatial tokens reweighted."""
        b = z_t.shape[0]
        emb = torch.cat([self.uncond_emb.expand(b, -1, -1), self.cond_emb.expand(b, -1, -1)])
        weights = None if self.plain else self._token_weights(b)
        kwargs = {} if weights is None else {"cross_attention_kwargs": {"token_weights": weights}}
        with torch.no_grad():
            x = torch.cat([z_t, z_t]).to(self.dtype)
            out = self.model.unet(x, torch.cat([t, t]), encoder_hidden_states=emb, **kwargs).sample.float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1).repeat(2, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * torch.cat([z_t, z_t]).float()  # v -> eps
        uncond, cond = out.chunk(2)
        return uncond + self.settings.guidance_scale * (cond - uncond)

    def _token_weights(self, b: int) -> torch.Tensor:
        """``[2b, L]`` factors of the CFG batch (unconditional half 1), made once per batch size on the device."""
        cached = getattr(self, "_weights", None)
        if cached is None or cached.shape[0] != 2 * b:
            w = self.prompt.token_weights.to(self.device)
            self._weights = torch.cat([torch.ones_like(w).expand(b, -1), w.expand(b, -1)])
        return self._weights

    def sample_timesteps(self, n: int) -> torch.Tensor:
        """``[n]`` int64 timesteps uniform in ``t_range * T`` (inclusive), from the guidance's generator."""
        lo, hi = self.settings.t_range
        T = self.num_train_timesteps
        return torch.randint(int(lo * T), int(hi * T) + 1, (n,), generator=self.generator).clamp_max(T - 1)

    def __call__(self, scene: Scene, step: int) -> dict[str, torch.Tensor]:
        s = self.settings
        cams = sample_views(scene, s.views, s.render_resolution, s.view_sampling, self.generator)
        rgb = render_scene(scene, cams, backend=s.backend, check=False).rgb  # [V, H, W, 3], objects over white
        # Every view's timestep and noise first, from the one CPU generator, copied to the device
        # without waiting for it: chunking changes no number.
        t = self.sample_timesteps(s.views)
        noise = torch.randn((s.views, self.latent_channels, *self._latent_hw()), generator=self.generator)
        t, noise = t.to(self.device, non_blocking=True), noise.to(self.device, non_blocking=True)
        a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1).float()
        w = (1 - a).reshape(-1) if s.weighting == "sds" else torch.ones_like(a.reshape(-1))
        chunk = s.encode_chunk or s.views
        backprop = torch.is_grad_enabled() and rgb.requires_grad
        if not backprop or chunk >= s.views:
            latents = self.encode(rgb).float()
            eps = self.predict_noise(a.sqrt() * latents.detach() + (1 - a).sqrt() * noise, t)
            return {"loss_ssds": sds_loss(latents, eps, noise, w)}
        # Memory (module doc): the UNet sees every view at once, from latents encoded without a
        # graph; then each chunk is encoded again with one and its SDS gradient pushed back to the
        # renders. Only the renders' gradient is kept between chunks.
        with torch.no_grad():
            latents = self.encode(rgb).float()
        eps = self.predict_noise(a.sqrt() * latents + (1 - a).sqrt() * noise, t)
        images = rgb.detach().requires_grad_(True)
        total = rgb.new_zeros(())
        for lo in range(0, s.views, chunk):
            sl = slice(lo, min(lo + chunk, s.views))
            part = sds_loss(self.encode(images[sl]).float(), eps[sl], noise[sl], w[sl]) * ((sl.stop - lo) / s.views)
            part.backward()  # sds_loss averages over its chunk; scaled, the chunks sum to the mean
            total = total + part.detach()
        # Value: the loss; gradient w.r.t. the renders: the one the chunks accumulated.
        grad = images.grad
        return {"loss_ssds": total + ordered_sum(rgb * grad) - ordered_sum(rgb.detach() * grad)}

    @property
    def latent_channels(self) -> int:
        return int(getattr(self.model.vae.config, "latent_channels", 4))

    def _latent_hw(self) -> tuple[int, int]:
        f = 2 ** (len(self.model.vae.config.block_out_channels) - 1)
        return self.model_resolution // f, self.model_resolution // f


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """``[T]`` float32 cumulative products of (1 - beta) of the model's noise schedule."""
    T = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = float(scheduler_config.get("beta_start", 0.00085)), float(scheduler_config.get("beta_end", 0.012))
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    else:
        raise ValueError(f"scheduler: beta_schedule {kind!r} is not supported; expected 'scaled_linear' or 'linear' "
                         "(SD 1.x/2.x)")
    return torch.cumprod(1 - betas, 0).float()
