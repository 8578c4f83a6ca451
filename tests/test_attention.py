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

    from comboverse_ops.guidance.attention import SpatialTokenAttnProcessor, TokenWeights

    attn, x, ctx = _attn()
    with torch.no_grad():
        attn.set_processor(getattr(ap, stock)())
        ref = attn(x, encoder_hidden_states=ctx)
        state = TokenWeights()
        attn.set_processor(SpatialTokenAttnProcessor(state))
        unset = attn(x, encoder_hidden_states=ctx)
        with state.use(torch.ones(1, 77)):
            ones = attn(x, encoder_hidden_states=ctx)
    assert (unset - ref).abs().max() < 1e-5 and (ones - ref).abs().max() < 1e-5


@pytest.mark.parametrize("renormalize", [False, True])
def test_factor_25_equals_the_explicit_prompt_to_prompt_computation(renormalize):
    from comboverse_ops.guidance.attention import SpatialTokenAttnProcessor, TokenWeights

    attn, x, ctx = _attn(3)
    w = torch.ones(3, 77)
    w[1:, [5, 6, 7]] = 25.0  # batch item 0 (an unconditional half) keeps w = 1
    state = TokenWeights(renormalize=renormalize)
    attn.set_processor(SpatialTokenAttnProcessor(state))
    with torch.no_grad(), state.use(w):
        got = attn(x, encoder_hidden_states=ctx)
        want = _explicit(attn, x, ctx, w, renormalize)
        plain = _explicit(attn, x, ctx, torch.ones(3, 77))
    assert (got - want).abs().max() < 1e-5
    assert (got[0] - plain[0]).abs().max() < 1e-5 and (got[1:] - plain[1:]).abs().max() > 1e-2
    # Backward works through the fast path (no gradients are needed in SSDS, but hooks may ask).
    with state.use(w):
        xg = x.clone().requires_grad_()
        attn(xg, encoder_hidden_states=ctx).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_installing_on_a_unet_changes_only_matching_cross_attention_layers(tmp_path):
    from diffusers import UNet2DConditionModel
    from tiny_models import tiny_sd_configs

    from comboverse_ops.guidance.attention import (
        SpatialTokenAttnProcessor,
        TokenWeights,
        install_spatial_attention,
        remove_spatial_attention,
    )

    cfg = tiny_sd_configs("sd1", False, 200)["unet/config.json"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    x, t, emb = torch.randn(2, 4, 16, 16), torch.tensor([700, 700]), torch.randn(2, 77, 24)
    with torch.no_grad():
        ref = unet(x, t, emb).sample
    state = TokenWeights()
    names = install_spatial_attention(unet, state)
    procs = unet.attn_processors
    assert names and all(".attn2." in n for n in names)
    assert all(isinstance(procs[n], SpatialTokenAttnProcessor) == (n in names) for n in procs)
    w = torch.ones(2, 77)
    w[:, 3] = 25
    with torch.no_grad():
        same = unet(x, t, emb).sample
        with state.use(w):
            changed = unet(x, t, emb).sample
    assert (same - ref).abs().max() < 1e-5 and (changed - ref).abs().max() > 1e-4
    only_up = install_spatial_attention(unet, state, r"up_blocks")
    assert only_up and set(only_up) < set(names)
    with pytest.raises(ValueError, match="matches none"):
        install_spatial_attention(unet, state, "no_such_layer")
    remove_spatial_attention(unet)
    assert not any(isinstance(p, SpatialTokenAttnProcessor) for p in unet.attn_processors.values())
