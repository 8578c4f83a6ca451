"""SD 1.x / 2.x loading, offline: single files in the original layout, diffusers folders, refusals."""

import json
import shutil

import pytest
import torch

from tiny_models import node_class, save_tiny_sd, write_tiny_tokenizer

import diffusers, transformers  # noqa: F401,E402  (declared dependencies: fail loudly, never skip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """(family, inpainting) -> (checkpoint, config_dir, tokenizer_dir, float32 modules)."""
    root = tmp_path_factory.mktemp("sd")
    return {(fam, inp): save_tiny_sd(root / f"{fam}-{inp}", fam, inp)
            for fam, inp in (("sd1", True), ("sd2", True), ("sd2", False))}


def _outputs(unet, vae, text, tokenizer):
    ids = tokenizer("a complete 3D model of a red box", padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 16, 16, generator=g)
    img = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        emb = text(ids).last_hidden_state
        return emb, unet(x, torch.tensor([500]), emb).sample, vae(img).sample


def _assert_same_networks(want, got):
    """The loaded networks hold exactly the original weights, and compute the same outputs up to
    float rounding: the weights are our loader's job (bit-exact), while the arithmetic belongs to
    diffusers/transformers, whose releases may reorder it (a fresh install once missed by 8.9e-7)."""
    for a, b in zip(want[:3], got[:3]):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), type(a).__name__
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), f"{type(a).__name__}: weight {k} differs after loading"
    for a, b in zip(_outputs(*want), _outputs(*got)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_shipped_configs_describe_the_published_architectures():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from comboverse_ops.models.sd_checkpoint import shipped_config_dir

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Published parameter counts: SD 1.5 UNet 859.52M, SD 2 UNet 865.91M (+ 5 x 320 x 9 for the inpainting input
    # convolution's extra channels), the SD VAE 83.65M, CLIP ViT-L/14 text 123.06M.
    expected = {"sd1": (859_520_964, 123_060_480), "sd2": (865_910_724, None)}
    for name in ("sd1", "sd1-inpainting", "sd2", "sd2-inpainting"):
        cfg = shipped_config_dir(name)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg), subfolder="unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg), subfolder="vae"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder")))
        unet_params, text_params = expected[name[:3]]
        assert count(unet) == unet_params + (14_400 if "inpainting" in name else 0), name
        assert count(vae) == 83_653_863
        if text_params:
            assert count(text) == text_params
        assert unet.config.in_channels == (9 if "inpainting" in name else 4)
        assert text.config.hidden_size == unet.config.cross_attention_dim == (1024 if name.startswith("sd2") else 768)
        index = json.loads((cfg / "model_index.json").read_text())
        assert index["_class_name"] == ("StableDiffusionInpaintPipeline" if "inpainting" in name
                                        else "StableDiffusionPipeline")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_single_file_in_the_original_layout_loads_to_the_same_networks(tiny_sd, family):
    from comboverse_ops.models.sd import load_sd_model

    path, cfg, tok, (unet, vae, text) = tiny_sd[(family, True)]
    model = load_sd_model(path, expect="inpainting", config_dir=cfg, cache=None)
    assert model.info.family == family and model.info.inpainting and model.info.prediction_type == "epsilon"
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # fp32 on the CPU
    assert model.unet.config.in_channels == 9 and not model.unet.training
    _assert_same_networks((unet, vae, text, model.tokenizer),
                          (model.unet, model.vae, model.text_encoder, model.tokenizer))
    ids = model.tokenizer("a box", padding="max_length", max_length=77).input_ids
    # SD2's OpenCLIP pads with "!" (id 0), SD1 with the end token.
    assert ids[-1] == (0 if family == "sd2" else model.tokenizer.eos_token_id)
    assert model.tokenizer.model_max_length == 77


def test_a_half_precision_file_loads_as_float32_on_the_cpu(tmp_path):
    from comboverse_ops.models.sd import load_sd_model

    path, cfg, _, _ = save_tiny_sd(tmp_path, "sd1", True, dtype=torch.float16)
    model = load_sd_model(path, config_dir=cfg, cache=None)
    assert {p.dtype for p in model.modules().parameters()} == {torch.float32}


def test_text_to_image_checkpoints_are_recognised_for_ssds_and_refused_for_inpainting(tiny_sd):
    from comboverse_ops.models.sd import load_sd_model

    path, cfg, _, _ = tiny_sd[("sd2", False)]
    model = load_sd_model(path, expect="text2img", config_dir=cfg, cache=None)
    assert model.info.family == "sd2" and not model.info.inpainting and model.unet.config.in_channels == 4
    with pytest.raises(ValueError, match="text-to-image.*9-channel inpainting"):
        load_sd_model(path, expect="inpainting", config_dir=cfg, cache=None)
    ipath, icfg, _, _ = tiny_sd[("sd2", True)]
    with pytest.raises(ValueError, match="expected an SD 1.x/2.x text-to-image"):
        load_sd_model(ipath, expect="text2img", config_dir=icfg, cache=None)


def test_the_model_cache_loads_a_file_once(tiny_sd):
    from comboverse_ops.models import MODEL_CACHE
    from comboverse_ops.models.sd import load_sd_model

    path, cfg, _, _ = tiny_sd[("sd1", True)]
    a = load_sd_model(path, expect="inpainting", config_dir=cfg)
    b = load_sd_model(path, expect="inpainting", config_dir=cfg)
    assert a is b and any(k.file == str(path.resolve()) for k in MODEL_CACHE.keys())
    MODEL_CACHE.clear()


def _diffusers_folder(root, tiny, flat_text: bool):
    """A diffusers pipeline folder of the tiny model; the text encoder in either transformers layout."""
    from safetensors.torch import load_file, save_file

    path, cfg, tok, (unet, vae, text) = tiny
    folder = root / ("flat" if flat_text else "prefixed")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    fix = (lambda k: k.removeprefix("text_model.")) if flat_text else \
        (lambda k: k if k.startswith("text_model.") else "text_model." + k)
    save_file({fix(k): v for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    shutil.copytree(tok, folder / "tokenizer")
    shutil.copytree(cfg / "scheduler", folder / "scheduler")
    shutil.copy(cfg / "model_index.json", folder / "model_index.json")
    return folder


@pytest.mark.parametrize("flat_text", [True, False], ids=["transformers5-flat", "transformers4-prefixed"])
def test_a_diffusers_folder_loads_with_either_text_encoder_layout(tmp_path, tiny_sd, flat_text):
    from comboverse_ops.models.sd import load_sd_model

    tiny = tiny_sd[("sd2", True)]
    folder = _diffusers_folder(tmp_path, tiny, flat_text)
    model = load_sd_model(folder, expect="inpainting", cache=None)
    assert model.info.source == "diffusers" and model.info.family == "sd2" and model.info.inpainting
    unet, vae, text = tiny[3]
    _assert_same_networks((unet, vae, text, model.tokenizer),
                          (model.unet, model.vae, model.text_encoder, model.tokenizer))


def _save(path, state):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("keys, message", [
    ({"conditioner.embedders.1.model.token_embedding.weight": (8, 4),
      "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "SDXL"),
    ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "Flux"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4, 4)}, "SD3"),
    ({"input_blocks.0.0.weight": (8, 4, 3, 3), "out.2.weight": (4, 8, 3, 3)}, "UNet-only"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)}, "LoRA"),
    ({"image_encoder.patch_embed.proj.weight": (8, 3, 16, 16)}, "not a Stable Diffusion"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 8, 3, 3), "first_stage_model.x": (1,),
      "cond_stage_model.transformer.x": (1,)}, "8 input channels"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3), "cond_stage_model.transformer.x": (1,)},
     "no VAE"),
])
def test_wrong_kinds_of_checkpoint_are_refused_with_what_they_are(tmp_path, keys, message):
    from comboverse_ops.models.sd import load_sd_model

    path = _save(tmp_path / "model.safetensors", {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(ValueError, match=message):
        load_sd_model(path, expect="inpainting", cache=None)


def test_missing_files_config_mismatches_and_missing_tokenizers_are_clear(tmp_path, tiny_sd, monkeypatch):
    from comboverse_ops.models import clip_vocab
    from comboverse_ops.models.sd import load_sd_model

    monkeypatch.setattr(clip_vocab, "packaged_bpe_file", lambda: None)  # as without open_clip_torch

    with pytest.raises(FileNotFoundError, match="models/checkpoints"):
        load_sd_model(tmp_path / "nothing.safetensors", expect="inpainting", cache=None)
    path, cfg, tok, _ = tiny_sd[("sd1", True)]
    # The shipped SD 1.5 config does not fit the tiny UNet: the message says to pass the matching config.
    with pytest.raises(ValueError, match="pass the config folder that matches"):
        load_sd_model(path, expect="inpainting", cache=None)
    # Without a tokenizer anywhere, the error says what to put where.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(path, lonely / path.name)
    with pytest.raises(FileNotFoundError, match="pip install open_clip_torch.*vocab.json and merges.txt"):
        load_sd_model(lonely / path.name, config_dir=cfg, cache=None)
    # ... and with one in a folder the host names (ComfyUI's comfy/sd1_tokenizer), it loads.
    model = load_sd_model(lonely / path.name, config_dir=cfg, tokenizer_dirs=[tok], cache=None)
    assert model.tokenizer("a").input_ids[0] == model.tokenizer.bos_token_id


def test_a_tokenizer_json_alone_is_enough(tmp_path):
    from transformers import CLIPTokenizerFast

    from comboverse_ops.models.sd_text import load_clip_tokenizer

    write_tiny_tokenizer(tmp_path / "bpe")
    tok = load_clip_tokenizer([tmp_path / "bpe"], "sd1")
    CLIPTokenizerFast.from_pretrained(str(tmp_path / "bpe")).save_pretrained(str(tmp_path / "json"))
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / "json" / f).unlink(missing_ok=True)
    again = load_clip_tokenizer([tmp_path / "missing", tmp_path / "json"], "sd1")
    assert again("the red box").input_ids == tok("the red box").input_ids


def test_the_loader_node_loads_an_inpainting_model_and_refuses_others(pack, tiny_sd, tmp_path):
    loader = node_class(pack, "loaders", "LoadInpaintModel")
    path, cfg, _, _ = tiny_sd[("sd2", True)]
    (model,) = loader().load(str(path), config_dir=str(cfg))
    assert model.info.inpainting and model.dtype == torch.float32
    tpath, tcfg, _, _ = tiny_sd[("sd2", False)]
    with pytest.raises(ValueError, match="ComboVerse Load Inpaint Model.*inpainting needs"):
        loader().load(str(tpath), config_dir=str(tcfg))
    with pytest.raises(FileNotFoundError, match="models/checkpoints folder"):
        loader().load("no-such-model.safetensors")
