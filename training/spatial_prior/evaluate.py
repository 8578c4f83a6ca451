"""Validate the spatial prior before any SSDS claim (issue 12, item 3).

    python -m training.spatial_prior.evaluate PRIOR_FOLDER --out DIR [--n 240]

1. **Checker calibration**: the colour checker (:mod:`.checker`) on true renders of the held-out
   captions (how often it reads a real picture right).
2. **Samples**: pictures sampled for held-out captions (DDIM, classifier-free guidance), with the
   relation tokens' cross-attention at c = 1 and at c = 25 (the pack's
   :mod:`comboverse_ops.guidance.attention` processor); the checker scores each relation.
3. **The SDS diagnostic**: pictures showing the *opposite* of their caption are noised to
   t in [0.8, 0.9] T, and the pack's own :class:`comboverse_ops.guidance.ssds.SSDSGuidance` (unchanged
   path: prompt parsing, token weights, attention processor, guidance scale) predicts the noise;
   the clean picture it implies, ``x0 = (z_t - sqrt(1 - a) eps_hat) / sqrt(a)``, is what SDS pulls
   the render towards. Scored: does it show the caption's relation (the layout flipped)?

Writes ``metrics.json`` and PNG grids into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from comboverse_ops.guidance.attention import install_spatial_attention, remove_spatial_attention
from comboverse_ops.models.sd import load_sd_model, make_scheduler
from comboverse_ops.guidance.spatial_tokens import parse_spatial_prompt
from comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings

from .checker import check_caption
from .scenes import RELATIONS, SamplerSettings, SceneSampler


def _per_relation(specs, ok: list[bool]) -> dict:
    by = defaultdict(list)
    for sp, o in zip(specs, ok):
        by[sp.relations[0][1]].append(bool(o))
    out = {r: round(sum(by[r]) / len(by[r]), 3) for r in RELATIONS if by[r]}
    out["all"] = round(sum(ok) / max(1, len(ok)), 3)
    return out


def decode(model, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``[B, 4, h, w]`` -> pictures ``[B, H, W, 3]`` in [0, 1]."""
    vae = model.vae
    x = vae.decode(z.to(model.dtype) / vae.config.scaling_factor).sample.float()
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


@torch.no_grad()
def sample(model, captions: list[str], *, reweight: float, cfg: float = 7.5, steps: int = 50,
           generator: torch.Generator) -> torch.Tensor:
    """``[N, H, W, 3]`` pictures for ``captions``, relation tokens reweighted by ``reweight``."""
    dev, dt = model.device, model.dtype
    prompts = [parse_spatial_prompt(c, model.tokenizer, reweight) for c in captions]
    ids = torch.stack([p.input_ids for p in prompts]).to(dev)
    uncond_ids = model.tokenizer("", padding="max_length", max_length=ids.shape[1], return_tensors="pt").input_ids
    emb = model.text_encoder(torch.cat([uncond_ids.to(dev), ids]))[0].to(dt)
    emb = torch.cat([emb[:1].expand(len(captions), -1, -1), emb[1:]])
    weights = torch.cat([torch.ones(len(captions), ids.shape[1]), torch.stack([p.token_weights for p in prompts])])
    install_spatial_attention(model.unet)
    kwargs = {"cross_attention_kwargs": {"token_weights": weights.to(dev)}} if reweight != 1 else {}
    sched = make_scheduler("ddim", model.scheduler_config)
    sched.set_timesteps(steps)
    size = int(model.unet.config.sample_size)
    z = torch.randn(len(captions), 4, size, size, generator=generator).to(dev)
    try:
        for t in sched.timesteps:
            out = model.unet(torch.cat([z, z]).to(dt), t.to(dev), encoder_hidden_states=emb, **kwargs).sample.float()
            u, c = out.chunk(2)
            z = sched.step(u + cfg * (c - u), t, z).prev_sample
    finally:
        remove_spatial_attention(model.unet)
    return decode(model, z)


@torch.no_grad()
def sds_targets(model, images: torch.Tensor, captions: list[str], *, reweight: float, scale: float,
                generator: torch.Generator, t_range=(0.8, 0.9)) -> torch.Tensor:
    """The clean pictures SSDS pulls each picture towards (module doc), one per caption."""
    out = []
    for img, cap in zip(images, captions):
        g = SSDSGuidance(model, SSDSSettings(prompt=cap, reweight=reweight, guidance_scale=scale,
                                             t_range=t_range, seed=int(torch.randint(2 ** 31, (), generator=generator))))
        z0 = g.encode(img[None]).float()
        t = g.sample_timesteps(1).to(model.device)
        a = g.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        noise = torch.randn(z0.shape, generator=generator).to(model.device)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = g.predict_noise(zt, t)
        out.append((zt - (1 - a).sqrt() * eps) / a.sqrt())
    remove_spatial_attention(model.unet)
    return decode(model, torch.cat(out))


def _grid(images: torch.Tensor, path: Path, cols: int = 8, captions: list[str] | None = None) -> None:
    from PIL import Image, ImageDraw

    n = min(len(images), cols * 4)
    s = images.shape[1]
    cell = 2 * s
    canvas = Image.new("RGB", (cols * cell, ((n + cols - 1) // cols) * (cell + 24)), "white")
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        im = Image.fromarray((images[k].cpu() * 255).round().byte().numpy()).resize((cell, cell), Image.NEAREST)
        x, y = (k % cols) * cell, (k // cols) * (cell + 24)
        canvas.paste(im, (x, y))
        if captions:
            words = captions[k].split(",")[0].split(" ")
            draw.text((x + 2, y + cell), " ".join(words[:4]), fill="black")
            draw.text((x + 2, y + cell + 11), " ".join(words[4:]), fill="black")
    canvas.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", help="the prior's diffusers folder")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=240, help="held-out captions (>= 200 for the issue's check)")
    p.add_argument("--diag-n", type=int, default=120, help="pictures for the SDS diagnostic")
    p.add_argument("--scales", default="1,7.5,100", help="SDS guidance scales for the diagnostic")
    p.add_argument("--bands", default="0.8-0.9", help="timestep bands (fractions of T) for the diagnostic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    model = load_sd_model(a.prior, expect="text2img", device=dev, dtype=torch.float32)
    size = int(model.unet.config.sample_size) * 2 ** (len(model.vae.config.block_out_channels) - 1)
    sampler = SceneSampler(SamplerSettings(image_size=size, third_object=0.0), device=dev, split="heldout")
    g = torch.Generator().manual_seed(a.seed)
    truth, captions, specs = sampler.sample(a.n, g)
    metrics = {"n": a.n, "checker_on_true_renders": _per_relation(specs, [check_caption(i, s) for i, s in
                                                                          zip(truth, specs)])}
    _grid(truth, out / "heldout_truth.png", captions=captions)
    for c in (1.0, 25.0):
        imgs = sample(model, captions, reweight=c, generator=torch.Generator().manual_seed(a.seed + 1))
        metrics[f"samples_c{int(c)}"] = _per_relation(specs, [check_caption(i, s) for i, s in zip(imgs, specs)])
        _grid(imgs, out / f"samples_c{int(c)}.png", captions=captions)
        print(f"samples c={c}: {metrics[f'samples_c{int(c)}']}", flush=True)
    g = torch.Generator().manual_seed(a.seed + 2)
    opp, opp_caps, opp_specs = sampler.sample(a.diag_n, g, opposite=True)
    metrics["opposite_pictures_read_as_caption"] = _per_relation(
        opp_specs, [check_caption(i, s) for i, s in zip(opp, opp_specs)])
    _grid(opp, out / "diagnostic_input.png", captions=opp_caps)
    for band in a.bands.split(","):
        lo, hi = (float(x) for x in band.split("-"))
        for scale in [float(x) for x in a.scales.split(",")]:
            for c in (1.0, 25.0):
                x0 = sds_targets(model, opp, opp_caps, reweight=c, scale=scale, t_range=(lo, hi),
                                 generator=torch.Generator().manual_seed(a.seed + 3))
                key = f"sds_flip_t{band}_s{scale:g}_c{int(c)}"
                metrics[key] = _per_relation(opp_specs, [check_caption(i, s) for i, s in zip(x0, opp_specs)])
                print(f"{key}: {metrics[key]}", flush=True)
                _grid(x0, out / f"diagnostic_{key}.png", captions=opp_caps)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
