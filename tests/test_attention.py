"""The spatial-token attention processor against diffusers' stock processors and an explicit computation."""

import pytest
import torch

import diffusers  # noqa: F401,E402  (declared dependencies: fail loudly, never skip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def _attn(seed=0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, bias=False)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, 50, 32, generator=g)
    ctx = torch.randn(3, 77, 24, generator=g)
    return attn.eval(), x, ctx


def _explicit(attn, x, ctx, w, renormalize=False):
    """Prompt-to-prompt reweighting written out: softmax probabilities, columns times w, times V."""
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    b, n, _ = q.shape
    h = attn.heads
    q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
    p = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
    p = p * w[:, None, None, :]
    if renormalize:
        p = p / p.sum(-1, keepdim=True)
    out = (p @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("stock", ["AttnProcessor", "AttnProcessor2_0"])
def test_factor_one_reproduces_the_stock_processors(stock):
    import diffusers.models.attention_processor as ap

    from comboverse_ops.guidance.attention import SpatialTokenAttnProcessor

    attn, x, ctx = _attn()
    w = torch.full((1, 77), 25.0)
    with torch.no_grad():
        attn.set_processor(getattr(ap, stock)())
        ref = attn(x, encoder_hidden_states=ctx)
        attn.set_processor(SpatialTokenAttnProcessor())
        unset = attn(x, encoder_hidden_states=ctx)
        ones = attn(x, encoder_hidden_states=ctx, token_weights=torch.ones(1, 77))
        attn.set_processor(SpatialTokenAttnProcessor(active=False))
        inactive = attn(x, encoder_hidden_states=ctx, token_weights=w)
    assert (unset - ref).abs().max() < 1e-5 and (ones - ref).abs().max() < 1e-5
    assert (inactive - ref).abs().max() < 1e-5  # a layer not chosen ignores the weights


@pytest.mark.parametrize("renormalize", [False, True])
def test_factor_25_equals_the_explicit_prompt_to_prompt_computation(renormalize):
    from comboverse_ops.guidance.attention import SpatialTokenAttnProcessor

    attn, x, ctx = _attn(3)
    w = torch.ones(3, 77)
    w[1:, [5, 6, 7]] = 25.0  # batch item 0 (an unconditional half) keeps w = 1
    attn.set_processor(SpatialTokenAttnProcessor(renormalize=renormalize))
    with torch.no_grad():
        got = attn(x, encoder_hidden_states=ctx, token_weights=w)
        want = _explicit(attn, x, ctx, w, renormalize)
        plain = _explicit(attn, x, ctx, torch.ones(3, 77))
    assert (got - want).abs().max() < 1e-5
    assert (got[0] - plain[0]).abs().max() < 1e-5 and (got[1:] - plain[1:]).abs().max() > 1e-2
    # Backward works through the fast path (no gradients are needed in SSDS, but hooks may ask).
    xg = x.clone().requires_grad_()
    attn(xg, encoder_hidden_states=ctx, token_weights=w).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_installing_on_a_unet_changes_only_matching_cross_attention_layers(tmp_path):
    from diffusers import UNet2DConditionModel
    from tiny_models import tiny_sd_configs

    from comboverse_ops.guidance.attention import (
        SpatialTokenAttnProcessor,
        install_spatial_attention,
        remove_spatial_attention,
    )

    cfg = tiny_sd_configs("sd1", False, 200)["unet/config.json"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    x, t, emb = torch.randn(2, 4, 16, 16), torch.tensor([700, 700]), torch.randn(2, 77, 24)
    with torch.no_grad():
        ref = unet(x, t, emb).sample
    names = install_spatial_attention(unet)
    procs = unet.attn_processors
    assert names and all(".attn2." in n for n in names)
    assert all(isinstance(p, SpatialTokenAttnProcessor) for p in procs.values())  # every layer takes the keyword
    assert all(procs[n].active == (n in names) for n in procs)
    w = torch.ones(2, 77)
    w[:, 3] = 25
    with torch.no_grad():
        same = unet(x, t, emb).sample
        changed = unet(x, t, emb, cross_attention_kwargs={"token_weights": w}).sample
    assert (same - ref).abs().max() < 1e-5 and (changed - ref).abs().max() > 1e-4
    only_up = install_spatial_attention(unet, r"up_blocks")
    assert only_up and set(only_up) < set(names)
    with pytest.raises(ValueError, match="matches none"):
        install_spatial_attention(unet, "no_such_layer")
    remove_spatial_attention(unet)
    assert not any(isinstance(p, SpatialTokenAttnProcessor) for p in unet.attn_processors.values())
