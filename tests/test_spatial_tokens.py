"""Spatial tokens: the prompt's relation words mapped exactly to CLIP token positions."""

import pytest
import torch
from tiny_models import write_tiny_tokenizer


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tokenizer(request, tmp_path_factory):
    from comboverse_ops.models.sd_text import load_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(folder)
    return load_clip_tokenizer([folder], request.param)


def _positions_by_search(tok, text, phrase):
    """Where the phrase's own ids occur in the prompt's ids, found independently by a sliding match."""
    ids = tok(text, padding="max_length", max_length=77).input_ids
    sub = tok(phrase, add_special_tokens=False).input_ids
    hits = [i for i in range(len(ids) - len(sub) + 1) if ids[i:i + len(sub)] == sub]
    return ids, sub, hits


def test_a_marked_multi_token_phrase_maps_to_its_exact_positions(tokenizer):
    from comboverse_ops.guidance.spatial_tokens import parse_spatial_prompt

    sp = parse_spatial_prompt("a teddy bear (sitting on:25) a chair", tokenizer)
    assert sp.text == "a teddy bear sitting on a chair" and not sp.automatic
    ids, sub, hits = _positions_by_search(tokenizer, sp.text, "sitting on")
    (phrase,) = sp.phrases
    assert len(sub) > 1  # the tiny BPE splits words into several tokens
    assert phrase.positions == tuple(range(hits[0], hits[0] + len(sub))) and phrase.factor == 25.0
    assert sp.input_ids.tolist() == ids and sp.input_ids.shape == (77,)
    assert sp.input_ids[0] == tokenizer.bos_token_id  # position 0 is the start token
    assert torch.equal((sp.token_weights != 1).nonzero().flatten(), torch.tensor(phrase.positions))
    assert sp.token_weights[list(phrase.positions)].eq(25).all()
    # The sub-tokens decode back to the phrase.
    assert tokenizer.decode(sp.input_ids[list(phrase.positions)]).strip() == "sitting on"


def test_unmarked_prompts_find_relation_words_longest_first(tokenizer):
    from comboverse_ops.guidance.spatial_tokens import parse_spatial_prompt

    sp = parse_spatial_prompt("A cat in front of a dog, on the lawn", tokenizer, default_factor=7.0)
    assert sp.automatic and [p.text for p in sp.phrases] == ["in front of", "on"]
    assert all(p.factor == 7.0 for p in sp.phrases)
    for p in sp.phrases:
        _, sub, hits = _positions_by_search(tokenizer, sp.text, p.text)
        assert p.positions[0] in hits and len(p.positions) == len(sub)
    # Words that merely contain a relation word are not marked ("onion", "bond").
    sp = parse_spatial_prompt("an onion and a bond", tokenizer)
    assert sp.phrases == () and sp.token_weights.eq(1).all()


def test_marks_several_factors_escapes_and_errors(tokenizer):
    from comboverse_ops.guidance.spatial_tokens import parse_spatial_prompt

    sp = parse_spatial_prompt(r"a (dog:2) \(big\) (riding) a horse", tokenizer, default_factor=25.0)
    assert [(p.text, p.factor) for p in sp.phrases] == [("dog", 2.0), ("riding", 25.0)]
    assert "(big)" in sp.text
    with pytest.raises(ValueError, match="prompt: expected a prompt"):
        parse_spatial_prompt("  ", tokenizer)
    with pytest.raises(ValueError, match="cuts a word"):
        parse_spatial_prompt("a t(eddy:3) bear", tokenizer)
    long = "a " * 80 + "(on:25) a chair"
    with pytest.raises(ValueError, match="fall past the limit"):
        parse_spatial_prompt(long, tokenizer)
    # Long prompts are truncated to 77 like the text encoder sees them when nothing marked is lost.
    sp = parse_spatial_prompt("(on:25) a chair " + "a " * 100, tokenizer)
    assert sp.input_ids.shape == (77,) and sp.phrases[0].positions[0] == 1
