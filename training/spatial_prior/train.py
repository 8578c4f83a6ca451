"""Train the spatial prior from scratch on rendered, captioned scenes (README.md beside this file).

    python -m training.spatial_prior.train --state runs/prior --export runs/prior/pipeline --minutes 8

Each run first renders a pool of captioned pictures on the GPU (``--pool`` samples, a new
draw each run) and keeps it there with its token ids, so training steps never wait for data.
Two phases, one state: first the VAE learns to encode the 64 px pictures (``--vae-steps``; or
its weights come from earlier shards with ``--init-vae``), then the pool is encoded once and
the UNet and the text encoder learn v-prediction on its latents, with timesteps drawn half
uniformly and half from the high-noise band SSDS uses, and 10% of captions dropped for
classifier-free guidance. The weights are averaged (EMA) for export. A run stops after
``--minutes`` and saves everything to ``--state``; the next run with the same ``--state``
resumes where it stopped (same data stream, same optimiser state). ``--export`` writes the EMA
weights as the fp16 diffusers folder the pack loads, ``--shards`` the fp32 EMA in files of at
most 15 MiB (what can be carried off a lent machine to resume elsewhere with ``--init``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import TINY, PriorConfig, build_models, build_tokenizer, save_pipeline, scheduler_config
from .scenes import SamplerSettings, SceneSampler

HIGH_BAND = (600, 1000)  # half of the timesteps come from here: SSDS samples t in [0.8, 0.9] T


def _alphas_cumprod(T: int = 1000) -> torch.Tensor:
    c = scheduler_config()
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


_DRAWER: SceneSampler | None = None


def _draw(args):
    global _DRAWER
    n, seed = args
    if _DRAWER is None:
        _DRAWER = SceneSampler(SamplerSettings(), device="cpu", split="train")
    return _DRAWER.draw(n, seed)


class Batches:
    """Rendered training batches; layouts drawn ahead in worker processes (deterministic per step)."""

    def __init__(self, sampler: SceneSampler, batch: int, seed: int, start_step: int, workers: int, ahead: int = 6):
        self.sampler, self.batch, self.seed = sampler, batch, seed
        self.pool = ProcessPoolExecutor(workers) if workers > 0 else None
        self.step = start_step
        self.pending = {}
        self.ahead = ahead

    def _submit(self, step: int):
        job = (self.batch, self.seed * 1_000_003 + step)
        self.pending[step] = self.pool.submit(_draw, job) if self.pool else job

    def next(self):
        for s in range(self.step, self.step + self.ahead):
            if s not in self.pending:
                self._submit(s)
        job = self.pending.pop(self.step)
        specs, layouts = job.result() if self.pool else _draw(job)
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.step)
        s = self.sampler.s
        n = len(specs)
        el = torch.empty(n).uniform_(*s.elevation_deg, generator=g)
        az = torch.empty(n).uniform_(*s.azimuth_deg, generator=g)
        zoom = torch.empty(n).uniform_(*s.zoom, generator=g)
        self.step += 1
        images = self.sampler.render(list(specs), list(layouts), el, az, zoom)
        return images, [sp.caption for sp in specs], g

    def close(self):
        if self.pool:
            self.pool.shutdown(cancel_futures=True)


def _save_shards(state: dict[str, torch.Tensor], folder: Path, max_bytes: int = 15 * 2 ** 20) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shard, size, k = {}, 0, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_bytes:
            save_file(shard, str(folder / f"ema_{k:02d}.safetensors"))
            shard, size, k = {}, 0, k + 1
        shard[name] = t.detach().float().cpu().contiguous()
        size += nbytes
    if shard:
        save_file(shard, str(folder / f"ema_{k:02d}.safetensors"))


def _load_shards(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("ema_*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, help="folder of the resumable training state")
    p.add_argument("--export", help="write the EMA weights here as the fp16 diffusers folder")
    p.add_argument("--shards", help="write the fp32 EMA weights here in files of <= 15 MiB")
    p.add_argument("--init", help="start from fp32 EMA shards written by --shards (when --state is empty)")
    p.add_argument("--init-vae", help="take the trained VAE from fp32 shards (skips the VAE phase)")
    p.add_argument("--pool", type=int, default=200_000, help="captioned pictures rendered per run")
    p.add_argument("--pool-seconds", type=float, default=90.0, help="stop rendering the pool after this long")
    p.add_argument("--minutes", type=float, default=8.0, help="stop (and save) after this many minutes")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many UNet steps (0: time only)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 2)))
    p.add_argument("--tiny", action="store_true", help="a few-kB model, for tests")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--log-every", type=int, default=100)
    a = p.parse_args(argv)

    t_start = time.time()
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    cfg = TINY if a.tiny else PriorConfig()
    state_dir = Path(a.state)
    state_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(state_dir / "tokenizer", cfg.max_tokens)
    vae, unet, text = build_models(cfg, len(tok), tok.bos_token_id, tok.eos_token_id)
    for m in (vae, unet, text):
        m.to(dev)
    ema = {f"unet.{k}": v.detach().clone().float() for k, v in unet.state_dict().items()}
    ema.update({f"text.{k}": v.detach().clone().float() for k, v in text.state_dict().items()})
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    opt = torch.optim.AdamW([*unet.parameters(), *text.parameters()], lr=a.lr, weight_decay=0.01)
    st = {"vae_step": 0, "step": 0, "scaling_factor": None, "log": [], "seconds": 0.0, "runs": 0}
    ckpt = state_dir / "state.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=dev, weights_only=False)
        vae.load_state_dict(saved["vae"])
        unet.load_state_dict(saved["unet"])
        text.load_state_dict(saved["text"])
        opt_vae.load_state_dict(saved["opt_vae"])
        opt.load_state_dict(saved["opt"])
        ema = {k: v.to(dev) for k, v in saved["ema"].items()}
        st = saved["st"]
        print(f"resumed from {ckpt}: vae step {st['vae_step']}, unet step {st['step']}", flush=True)
    elif a.init:
        shards = _load_shards(Path(a.init))
        vae.load_state_dict({k[4:]: v for k, v in shards.items() if k.startswith("vae.")})
        unet.load_state_dict({k[5:]: v for k, v in shards.items() if k.startswith("unet.")})
        text.load_state_dict({k[5:]: v for k, v in shards.items() if k.startswith("text.")})
        ema = {k: v.to(dev) for k, v in shards.items() if not k.startswith("vae.")}
        st = json.loads((Path(a.init) / "st.json").read_text())
        print(f"initialised from {a.init}: vae step {st['vae_step']}, unet step {st['step']} "
              "(optimiser state starts fresh)", flush=True)
    if a.init_vae and st["vae_step"] == 0:
        shards = _load_shards(Path(a.init_vae))
        vae.load_state_dict({k[4:]: v for k, v in shards.items() if k.startswith("vae.")})
        old = json.loads((Path(a.init_vae) / "st.json").read_text())
        st["vae_step"], st["scaling_factor"] = old["vae_step"], old["scaling_factor"]
        st["log"] += [e for e in old["log"] if e["phase"] == "vae"]
        print(f"VAE from {a.init_vae} ({st['vae_step']} steps, scaling factor {st['scaling_factor']:.4f})", flush=True)
    st["runs"] += 1

    sampler = SceneSampler(SamplerSettings(image_size=cfg.image_size), device=dev, split="train")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    deadline = t_start + a.minutes * 60
    acp = _alphas_cumprod().to(dev)

    def save():
        st["seconds"] += time.time() - t_run
        torch.save({"vae": vae.state_dict(), "unet": unet.state_dict(), "text": text.state_dict(),
                    "opt_vae": opt_vae.state_dict(), "opt": opt.state_dict(), "ema": ema, "st": st},
                   str(ckpt) + ".tmp")
        os.replace(str(ckpt) + ".tmp", ckpt)
        return time.time()

    t_run = time.time()
    # ---- the pool: pictures and token ids on the device -------------------------------------
    t0 = time.time()
    data = Batches(sampler, 2048 if not a.tiny else a.batch, a.seed * 101 + st["runs"], 0, a.workers)
    images, ids_list, cache = [], [], {}
    n_pool = 0
    while n_pool < a.pool and (time.time() - t0 < a.pool_seconds or n_pool == 0):
        x, captions, _ = data.next()
        images.append((x * 255).round().to(torch.uint8))
        for c in captions:
            if c not in cache:
                cache[c] = tok(c, padding="max_length", max_length=cfg.max_tokens, truncation=True).input_ids
        ids_list.append(torch.tensor([cache[c] for c in captions]))
        n_pool += len(captions)
    data.close()
    pool_img = torch.cat(images)[:a.pool]
    pool_ids = torch.cat(ids_list)[:a.pool].to(dev)
    n_pool = pool_img.shape[0]
    uncond = torch.tensor(tok("", padding="max_length", max_length=cfg.max_tokens).input_ids, device=dev)
    st.setdefault("pool_sizes", []).append(n_pool)
    print(f"pool: {n_pool} pictures, {len(cache)} distinct captions in {time.time() - t0:.0f} s", flush=True)

    def pictures(idx: torch.Tensor) -> torch.Tensor:
        return pool_img[idx].permute(0, 3, 1, 2).float() / 127.5 - 1

    gen = torch.Generator(device=dev).manual_seed(a.seed * 31 + st["runs"])
    # ---- phase 1: the VAE -------------------------------------------------------------------
    if st["vae_step"] < a.vae_steps:
        vae.train()
        while st["vae_step"] < a.vae_steps and time.time() < deadline:
            x = pictures(torch.randint(n_pool, (a.vae_batch,), device=dev, generator=gen))
            for group in opt_vae.param_groups:
                group["lr"] = 1e-3 * min(1.0, (st["vae_step"] + 1) / 100)
            with torch.autocast(**amp):
                post = vae.encode(x).latent_dist
                rec = vae.decode(post.sample(generator=gen)).sample.float()
            kl = post.kl().mean() / x[0].numel()
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt_vae.step()
            st["vae_step"] += 1
            if st["vae_step"] % a.log_every == 0:
                st["log"].append({"phase": "vae", "step": st["vae_step"], "loss": float(loss.detach()),
                                  "minutes": (st["seconds"] + time.time() - t_run) / 60})
                print(f"vae {st['vae_step']}: loss {loss.item():.5f} ({time.time() - t_start:.0f} s)", flush=True)
    vae.eval()
    vae.requires_grad_(False)
    if st["vae_step"] < a.vae_steps:
        t_run = save()
        print("time is up during the VAE phase; saved", flush=True)
        return 0
    # ---- encode the pool once ---------------------------------------------------------------------
    with torch.no_grad(), torch.autocast(**amp):
        pool_z = torch.cat([vae.encode(pictures(torch.arange(i, min(i + 4096, n_pool), device=dev)))
                            .latent_dist.mean.float() for i in range(0, n_pool, 4096)])
    if st["scaling_factor"] is None:
        st["scaling_factor"] = float(1 / pool_z[:8192].std())
        print(f"VAE latent std {1 / st['scaling_factor']:.4f}: scaling factor {st['scaling_factor']:.4f}", flush=True)
    vae.register_to_config(scaling_factor=st["scaling_factor"])
    pool_z = (pool_z * st["scaling_factor"]).to(torch.bfloat16 if dev.type == "cuda" else torch.float32)
    pool_img = None  # the pictures are encoded; free them

    # ---- phase 2: UNet + text encoder ---------------------------------------------------------
    params = [*unet.parameters(), *text.parameters()]
    names = [f"unet.{k}" for k, _ in unet.named_parameters()] + [f"text.{k}" for k, _ in text.named_parameters()]
    ema_list = [ema[n] for n in names]
    unet.train()
    text.train()
    t_save = seen = time.time()
    while time.time() < deadline and (not a.max_steps or st["step"] < a.max_steps):
        b = a.batch
        idx = torch.randint(n_pool, (b,), device=dev, generator=gen)
        z0 = pool_z[idx].float()
        drop = torch.rand(b, device=dev, generator=gen) < 0.1
        ids = torch.where(drop[:, None], uncond[None], pool_ids[idx])
        high = torch.rand(b, device=dev, generator=gen) < 0.5
        t = torch.where(high, torch.randint(*HIGH_BAND, (b,), device=dev, generator=gen),
                        torch.randint(0, 1000, (b,), device=dev, generator=gen))
        noise = torch.randn(z0.shape, device=dev, generator=gen)
        ac = acp[t].reshape(-1, 1, 1, 1)
        zt = ac.sqrt() * z0 + (1 - ac).sqrt() * noise
        v = ac.sqrt() * noise - (1 - ac).sqrt() * z0
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (st["step"] + 1) / 300)
        with torch.autocast(**amp):
            emb = text(ids)[0]
            pred = unet(zt, t, encoder_hidden_states=emb).sample.float()
        per = ((pred - v) ** 2).mean((1, 2, 3))
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(a.ema, (1 + st["step"]) / (10 + st["step"]))
            torch._foreach_lerp_(ema_list, [q.detach().float() for q in params], 1 - decay)
        st["step"] += 1
        if st["step"] % a.log_every == 0:
            hi = (per * high).sum() / high.sum().clamp_min(1)
            now = time.time()
            st["log"].append({"phase": "unet", "step": st["step"], "loss": float(loss.detach()),
                              "loss_high_t": float(hi.detach()), "minutes": (st["seconds"] + now - t_run) / 60,
                              "steps_per_s": a.log_every / (now - seen)})
            seen = now
            print(f"unet {st['step']}: loss {loss.item():.4f} (t in {HIGH_BAND}: {hi.item():.4f}), "
                  f"{st['log'][-1]['steps_per_s']:.1f} steps/s ({now - t_start:.0f} s)", flush=True)
        if time.time() - t_save > 150:
            t_run = save()
            t_save = time.time()
    t_run = save()
    print(f"saved {ckpt}: vae step {st['vae_step']}, unet step {st['step']}, "
          f"{st['seconds'] / 60:.1f} training minutes over {st['runs']} run(s)", flush=True)

    # ---- export -------------------------------------------------------------------------------
    if a.export or a.shards:
        unet_e, text_e = build_models(cfg, len(tok), tok.bos_token_id, tok.eos_token_id)[1:]
        unet_e.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("unet.")})
        text_e.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("text.")})
        meta = {"unet_steps": st["step"], "vae_steps": st["vae_step"], "batch": a.batch, "lr": a.lr, "ema": a.ema,
                "training_minutes": round(st["seconds"] / 60, 2), "seed": a.seed, "runs": st["runs"],
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "torch": torch.__version__}
        if a.export:
            save_pipeline(a.export, vae, unet_e, text_e, state_dir / "tokenizer", cfg, meta=meta)
            (Path(a.export) / "training_log.json").write_text(json.dumps(st["log"]))
            print(f"exported {a.export}", flush=True)
        if a.shards:
            full = {f"vae.{k}": v for k, v in vae.state_dict().items()}
            full.update(ema)
            _save_shards(full, Path(a.shards))
            (Path(a.shards) / "st.json").write_text(json.dumps(st))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
