"""captions.py: attributes measured on drawn strokes, captions, and the tokenizer."""
import random

import pytest
import torch
from hypothesis import given, strategies as st

import captions
from outputs import UserError


def stroke(width, shear=0.0, size=28):
    """A vertical bar `width` pixels wide, rows 4..23, whose top is moved `shear` columns right per
    row up. Returns (1, 1, size, size) in [-1, 1]: background -1, ink +1."""
    img = -torch.ones(1, 1, size, size)
    for row in range(4, 24):
        centre = 14 + shear * (13.5 - row)
        left = round(centre - width / 2)
        img[0, 0, row, left:left + width] = 1
    return img


def test_a_thicker_pen_measures_thicker():
    widths = [float(captions.measure(stroke(w))[0]) for w in (1, 2, 3, 4)]
    assert widths == sorted(widths) and widths[0] < captions.THIN and \
        widths[-1] > captions.THICK, widths
    assert captions.thickness_word(widths[0]) == "thin" and \
        captions.thickness_word(widths[-1]) == "thick"


@pytest.mark.parametrize("shear, words", [(0.0, "upright"), (0.5, "slanted right"),
                                          (-0.5, "slanted left")])
def test_a_sheared_stroke_measures_slanted(shear, words):
    slant = float(captions.measure(stroke(2, shear))[1])
    assert slant == pytest.approx(shear, abs=0.05)  # the least-squares slope recovers the shear
    assert captions.slant_words(slant) == words


def test_captions_name_the_digit_and_use_only_the_vocabulary():
    rng = random.Random(0)
    made = [captions.caption(7, 3.0, 0.5, rng) for _ in range(200)]
    assert all(c.split()[-1] in ("seven", "7", "right") for c in made)
    assert all(("seven" in c.split()) != ("7" in c.split()) for c in made)  # the digit, once
    assert {"7", "seven", "a thick seven slanted right"} <= set(made)      # short and long prompts
    assert captions.detokenize(captions.tokenize(made)) == made


@given(st.lists(st.sampled_from(captions.VOCAB[2:]), max_size=captions.MAX_WORDS))
def test_tokenize_round_trip(words):
    ids = captions.tokenize([" ".join(words)])
    assert ids.shape == (1, captions.MAX_TOKENS) and ids.dtype == torch.long
    assert ids[0, 0] == captions.VOCAB.index(captions.START)  # every prompt starts with it
    assert (ids[0, 1 + len(words):] == 0).all() and (ids[0, :1 + len(words)] > 0).all()
    assert captions.detokenize(ids) == [" ".join(words)]


def test_an_unknown_word_lists_the_vocabulary():
    with pytest.raises(UserError, match=r"unknown word 'big'.*the vocabulary is: a thin thick"):
        captions.tokenize(["a big seven"])
    for word in captions.PAD, captions.START:
        with pytest.raises(UserError, match="unknown word"):
            captions.tokenize([word])
    with pytest.raises(UserError, match="at most 6"):
        captions.tokenize(["a a a a a a a"])


def test_text_encoder_gives_a_vector_per_token_and_ignores_padding():
    torch.manual_seed(0)
    encoder = captions.TextEncoder(dim=32, layers=2, heads=4).eval()
    ids = captions.tokenize(["a thick seven", "", "7 upright"])
    tokens, mask = encoder(ids)
    assert tokens.shape == (3, captions.MAX_TOKENS, 32) and mask.tolist()[1] == [True] + [False] * 6
    # What a real token encodes does not depend on how much padding follows it.
    short, short_mask = encoder(ids[:, :4])
    assert torch.allclose(short[short_mask], tokens[:, :4][mask[:, :4]], atol=1e-5)
