"""The CLIP tokenizer from open_clip_torch's packaged BPE vocabulary, for single-file SD checkpoints
that carry no tokenizer: the transformers CLIPTokenizer built from it tokenises exactly as the
reference BPE over the same file (open_clip's own tokenizer) and has ComfyUI's vocabulary."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from comboverse_ops.models.clip_vocab import clip_vocab_and_merges, packaged_bpe_file, packaged_clip_tokenizer_dir
from comboverse_ops.models.sd_text import load_clip_tokenizer

BPE = packaged_bpe_file()
pytestmark = pytest.mark.skipif(BPE is None, reason="open_clip_torch (the extra comboverse[clip-vocab]) is not "
                                                    "installed")

PROMPTS = [
    "a complete 3D model",
    "a teddy bear (sitting on:25) a chair",
    "A RED cube, a blue ball; and a green cone!",
    "don't stop: it's 3.14159 metres & 42 kg?",
    "photo of a café in Zürich, 8k, ultra-detailed",
    "   multiple   spaces\tand\nnewlines  ",
    "hyphenated-words and_underscores #hashtag @user",
    "",
]


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _reference_tokenizer():
    """open_clip's SimpleTokenizer (OpenAI's BPE over the .gz), loaded from its file without
    importing the open_clip package (which pulls torchvision and timm)."""
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_ref", BPE.parent / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(BPE))


def test_vocabulary_has_clip_shape():
    vocab, merges = clip_vocab_and_merges(BPE)
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(49408))


def test_no_tokenizer_folder_falls_back_to_the_packaged_vocabulary(cache_home, tmp_path):
    tok = load_clip_tokenizer([tmp_path / "nothing_here"], "sd1")
    folder = packaged_clip_tokenizer_dir()
    assert folder.is_relative_to(cache_home) and (folder / "vocab.json").is_file()
    assert tok.model_max_length == 77 and tok.pad_token == "<|endoftext|>"
    assert load_clip_tokenizer([], "sd2").pad_token == "!"  # SD2's OpenCLIP pads with "!"
    ids = tok("a teddy bear", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[ids.index(49407) + 1:] == [49407] * (76 - ids.index(49407))


def test_tokenisation_equals_the_reference_bpe_over_the_same_file(cache_home):
    ref = _reference_tokenizer()
    tok = load_clip_tokenizer([], "sd1")
    for text in PROMPTS:
        assert tok(text, add_special_tokens=False).input_ids == ref.encode(text), text
        assert tok(text).input_ids == [49406, *ref.encode(text), 49407], text


def test_vocabulary_is_comfyuis_clip_tokenizer(cache_home):
    """ComfyUI ships openai/clip-vit-large-patch14's files as comfy/sd1_tokenizer: the same tokens
    with the same ids, and the same merges."""
    comfy = os.environ.get("COMFYUI_DIR")
    folder = Path(comfy or "") / "comfy" / "sd1_tokenizer"
    if not comfy or not (folder / "vocab.json").is_file():
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to compare with its CLIP tokenizer")
    ours = packaged_clip_tokenizer_dir()
    assert json.loads((ours / "vocab.json").read_text()) == json.loads((folder / "vocab.json").read_text())
    theirs = [m for m in (folder / "merges.txt").read_text().split("\n")[1:] if m]
    assert (ours / "merges.txt").read_text().split("\n")[1:-1] == theirs
    a, b = load_clip_tokenizer([ours], "sd1"), load_clip_tokenizer([folder], "sd1")
    for text in PROMPTS:
        assert a(text).input_ids == b(text).input_ids, text
