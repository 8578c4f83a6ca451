"""Spatial tokens of a prompt: which CLIP token positions the SSDS reweighting multiplies.

ComboVerse (METHOD.md, SSDS) multiplies the cross-attention of the words that state the spatial
relation ("sitting on", "in front of", ...) by ``c = 25``. Here those words are chosen by the user
with ComfyUI's weight syntax, or found automatically:

- ``a teddy bear (sitting on:25) a chair``: the words inside ``(...:factor)`` are marked with
  that factor; ``(words)`` without a factor marks them with the default factor. Nested
  parentheses are not supported; ``\\(`` and ``\\)`` are literal parentheses.
- when nothing is marked, every phrase of :data:`RELATION_PHRASES` in the prompt (longest first,
  whole words, case-insensitive, not overlapping) is marked with the default factor.

The mapping to token positions is exact for CLIP's tokenizer: CLIP's BPE splits text into words
(at spaces and punctuation) before merging, so tokenizing the prompt piece by piece at word
boundaries gives the same ids as tokenizing it whole (checked: a mark that cuts a word is an
error). Position 0 is the start token; a word's ``k``-th sub-token sits at ``1 + offset + k``;
the prompt is padded (SD1: end token, SD2: "!") or refused when longer than 75 tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["RELATION_PHRASES", "MarkedPhrase", "SpatialPrompt", "find_relation_phrases", "parse_spatial_prompt"]

# Relation words and phrases marked automatically when the prompt marks nothing. Multi-word
# phrases win over their parts ("sitting on" over "on", "in front of" over "in").
RELATION_PHRASES: tuple[str, ...] = (
    "on top of", "in front of", "next to", "close to", "on the left of", "on the right of", "to the left of",
    "to the right of", "sitting on", "standing on", "lying on", "leaning on", "leaning against", "resting on",
    "sitting in", "standing in", "lying in", "hanging from", "riding", "holding", "carrying", "wearing",
    "hugging", "on", "under", "underneath", "beneath", "below", "above", "over", "behind", "beside",
    "besides", "near", "inside", "in", "into", "between", "against", "around", "atop", "partly occluding",
    "occluding",
)

_MARK = re.compile(r"(?<!\\)\((?P<text>(?:[^()\\]|\\.)+?)(?::\s*(?P<factor>[-+]?\d*\.?\d+)\s*)?(?<!\\)\)")


@dataclass(frozen=True)
class MarkedPhrase:
    """One marked phrase.

    Attributes:
        text: the words as written in the prompt (without the weight syntax).
        factor: the attention multiplier ``c`` of its tokens.
        positions: token positions in the padded ``[77]`` id sequence (start token = 0).
    """

    text: str
    factor: float
    positions: tuple[int, ...]


@dataclass(frozen=True)
class SpatialPrompt:
    """A prompt with its spatial tokens.

    Attributes:
        text: the prompt without the weight syntax (what the text encoder sees).
        input_ids: ``[L]`` int64 token ids, start token, prompt, padding (``L`` = 77).
        token_weights: ``[L]`` float32, the factor of each position (1 for unmarked tokens).
        phrases: the marked phrases, in prompt order.
        automatic: True when the phrases were found in :data:`RELATION_PHRASES`.
    """

    text: str
    input_ids: torch.Tensor
    token_weights: torch.Tensor
    phrases: tuple[MarkedPhrase, ...]
    automatic: bool


def _unescape(s: str) -> str:
    return s.replace("\\(", "(").replace("\\)", ")")


def _split_marks(prompt: str, default_factor: float) -> tuple[list[tuple[str, float | None]], bool]:
    """The prompt as ``[(text, factor or None)]`` pieces; True when any piece was marked."""
    pieces, pos, marked = [], 0, False
    for m in _MARK.finditer(prompt):
        pieces.append((_unescape(prompt[pos:m.start()]), None))
        factor = float(m.group("factor")) if m.group("factor") is not None else default_factor
        pieces.append((_unescape(m.group("text")).strip(), factor))
        pos, marked = m.end(), True
    pieces.append((_unescape(prompt[pos:]), None))
    return pieces, marked


def find_relation_phrases(text: str, phrases=RELATION_PHRASES) -> list[tuple[int, int]]:
    """Character spans ``[(start, end)]`` of relation phrases in ``text`` (longest first, whole words)."""
    spans: list[tuple[int, int]] = []
    for phrase in sorted(phrases, key=lambda p: (-len(p), p)):
        pattern = r"(?<![\w'])" + r"\s+".join(map(re.escape, phrase.split())) + r"(?![\w'])"
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            if all(m.end() <= a or m.start() >= b for a, b in spans):
                spans.append((m.start(), m.end()))
    return sorted(spans)


def _join(pieces: list[tuple[str, float | None]]) -> list[tuple[str, float | None]]:
    """Pieces with single spaces between words, as the prompt would be written without marks."""
    out = []
    for text, factor in pieces:
        text = re.sub(r"\s+", " ", text)
        if factor is None:
            text = text.strip()
        if text:
            out.append((text, factor))
    return out


def parse_spatial_prompt(prompt: str, tokenizer, default_factor: float | None = None, *, auto: bool = True,
                         what: str = "prompt") -> SpatialPrompt:
    """Tokenize ``prompt`` and find the token positions of its spatial words (module doc).

    Args:
        prompt: text, optionally with ``(words:factor)`` marks.
        tokenizer: a ``transformers.CLIPTokenizer`` (``model_max_length`` = 77).
        default_factor: the factor of unmarked-by-number marks and automatic phrases (None:
            ``SSDSSettings.reweight``, the paper's c).
        auto: find :data:`RELATION_PHRASES` when nothing is marked.
    Raises:
        ValueError: an empty prompt, a prompt over the token limit with a marked word past it,
            or a mark that cuts a word in two (naming ``what``).
    """
    if default_factor is None:
        from .ssds import SSDSSettings  # here: ssds imports this module

        default_factor = SSDSSettings.reweight
    if not prompt or not prompt.strip():
        raise ValueError(f"{what}: expected a prompt that states the relation, e.g. 'a teddy bear (sitting on:25) "
                         "a chair', got an empty text")
    for m in _MARK.finditer(prompt):
        before, after = prompt[m.start() - 1:m.start()], prompt[m.end():m.end() + 1]
        if before.isalnum() or after.isalnum():
            raise ValueError(f"{what}: the mark {m.group(0)!r} cuts a word in two in {prompt!r}; put whole words "
                             "inside (...:factor), with spaces around it")
    pieces, marked = _split_marks(prompt, default_factor)
    pieces = _join(pieces)
    automatic = False
    if not marked and auto:
        plain = pieces[0][0] if pieces else ""
        spans = find_relation_phrases(plain)
        pieces, pos = [], 0
        for a, b in spans:
            pieces += [(plain[pos:a], None), (plain[a:b], default_factor)]
            pos = b
        pieces = _join(pieces + [(plain[pos:], None)])
        automatic = bool(spans)
    text = " ".join(t for t, _ in pieces)
    max_len = int(getattr(tokenizer, "model_max_length", 77) or 77)
    ids: list[int] = []
    found: list[MarkedPhrase] = []
    for piece, factor in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False).input_ids
        if factor is not None:
            found.append(MarkedPhrase(piece, factor, tuple(1 + len(ids) + k for k in range(len(piece_ids)))))
        ids += piece_ids
    whole = tokenizer(text, add_special_tokens=False).input_ids
    if whole != ids:
        raise ValueError(f"{what}: a marked phrase cuts a word in two in {prompt!r}; put whole words inside "
                         "(...:factor)")
    if len(ids) > max_len - 2:
        late = [p.text for p in found if p.positions and p.positions[-1] > max_len - 2]
        if late:
            raise ValueError(f"{what}: the prompt is {len(ids)} tokens, the text encoder reads {max_len - 2}; the "
                             f"marked words {late} fall past the limit: shorten the prompt")
        ids = ids[:max_len - 2]
    full = tokenizer(text, padding="max_length", max_length=max_len, truncation=True).input_ids
    input_ids = torch.tensor(full, dtype=torch.long)
    weights = torch.ones(max_len, dtype=torch.float32)
    for p in found:
        for i in p.positions:
            weights[i] = p.factor
    return SpatialPrompt(text, input_ids, weights, tuple(found), automatic)
