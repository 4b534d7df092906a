"""Part 3's way in for the text: cross-attention in unet.py, and a U-Net that reads a prompt.

@pytest.mark.ex11 grades exercise 11, CrossAttention.forward. Its tests check what attention must
do (one real token gets all the weight, padded tokens get none, the weights over the tokens sum to
one, each position reads on its own) and, for what has no closed form, compare with the output
stored in tests/reference_values.json, which the reference solution computed once.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

import captions
import unet
from unet import PRESETS, CrossAttention, UNet

REFERENCE = json.loads((Path(__file__).parent / "reference_values.json").read_text())


@pytest.fixture(autouse=True)
def softmax_by_hand(monkeypatch):
    """Exercise 11 asks for the softmax by hand: inside CrossAttention.forward,
    F.scaled_dot_product_attention raises (the given self-attention may still call it)."""
    given = torch.nn.functional.scaled_dot_product_attention

    def refuse(*args, **kwargs):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "forward" and \
                    isinstance(frame.f_locals.get("self"), CrossAttention):
                raise AssertionError(
                    "CrossAttention.forward called F.scaled_dot_product_attention; exercise 11 "
                    "asks for the attention by hand: the scores, -inf on padding, the softmax "
                    "over the tokens, the weighted sum of the values")
            frame = frame.f_back
        return given(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    if hasattr(unet, "scaled_dot_product_attention"):  # imported by name into unet.py
        monkeypatch.setattr(unet, "scaled_dot_product_attention", refuse)


def setup(L=5, real=(3, 1), ch=16, dim=12, seed=0):
    torch.manual_seed(seed)
    layer = CrossAttention(ch, dim, groups=4)
    x, context = torch.randn(len(real), ch, 7, 7), torch.randn(len(real), L, dim)
    # the first `real` tokens are words
    mask = torch.arange(L)[None, :] < torch.tensor(real)[:, None]
    return layer, x, context, mask


def cross_attention_case():
    """The layer, x, context and mask whose output tests/reference_values.json stores: two prompts
    of 3 and 5 real tokens among 6, at 4 x 4 positions."""
    layer, x, context, mask = setup(L=6, real=(3, 5), ch=8, dim=12, seed=3)
    return layer, x[:, :, :4, :4].contiguous(), context, mask


@pytest.mark.ex11
def test_shape_and_one_token_gets_all_the_weight():
    layer, x, context, mask = setup(real=(1, 1))
    out = layer(x, context, mask)
    assert out.shape == x.shape, f"CrossAttention returned shape {tuple(out.shape)} for x of " \
                                 f"shape {tuple(x.shape)}; expected the shape of x"
    # With one real token its softmax weight is 1 at every position: x plus the projection of its
    # value.
    expected = x + layer.proj(layer.v(context[:, 0]))[:, :, None, None]
    assert torch.allclose(out, expected, atol=1e-5), (
        "with one real token, every position should get x + self.proj(value of that token): its "
        "weight is 1 and the padding's 0")


@pytest.mark.ex11
def test_padding_does_not_change_the_output():
    layer, x, context, mask = setup(real=(3, 1))
    out = layer(x, context, mask)
    scrambled = torch.where(mask[:, :, None], context, 1e3 * torch.randn_like(context))
    assert torch.allclose(layer(x, scrambled, mask), out, atol=1e-5), (
        "changing the vectors of padded tokens (mask False) changed the output: give them "
        "weight 0 (score -inf before the softmax)")
    more = torch.cat([context, torch.randn(2, 4, context.shape[2])], dim=1)
    more_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    assert torch.allclose(layer(x, more, more_mask), out, atol=1e-5), (
        "four more padded tokens changed the output")
    # the real tokens matter
    assert not torch.allclose(layer(x, context.roll(1, dims=1), mask), out), (
        "the output does not depend on which real tokens the prompt has")


@pytest.mark.ex11
@pytest.mark.parametrize("real", [(2, 5), (4, 3)])
def test_the_weights_over_the_tokens_sum_to_one(real):
    """If every real token is the same vector, any weights that sum to one over the tokens give
    each position that token's value, whatever the positions' queries."""
    layer, x, context, mask = setup(L=5, real=real)
    same = torch.where(mask[:, :, None], context[:, :1], context)
    out = layer(x, same, mask)
    expected = x + layer.proj(layer.v(context[:, 0]))[:, :, None, None]
    assert torch.allclose(out, expected, atol=1e-5), (
        "with all real tokens equal, each position should get x + self.proj(their value): the "
        "softmax must run over the L tokens (the last axis of the scores), not over positions")


@pytest.mark.ex11
def test_each_position_reads_the_prompt_on_its_own():
    """Moving the pixels moves the output with them: a position's query comes from its own
    features, and its weights from its query alone."""
    layer, x, context, mask = setup(real=(3, 2))
    order = torch.randperm(49, generator=torch.Generator().manual_seed(1))
    shuffle = lambda images: images.flatten(2)[:, :, order].view_as(images)
    assert torch.allclose(layer(shuffle(x), context, mask), shuffle(layer(x, context, mask)),
                          atol=1e-5), "shuffling the pixels of x did not shuffle the output alike"


@pytest.mark.ex11
def test_cross_attention_matches_stored_values():
    layer, x, context, mask = cross_attention_case()
    with torch.no_grad():
        out = layer(x, context, mask)
    stored = torch.tensor(REFERENCE["cross_attention"], dtype=torch.float64)
    assert out.shape == stored.shape, (f"CrossAttention returned shape {tuple(out.shape)}; "
                                       f"expected x's, {tuple(stored.shape)}")
    gap = (out.double() - stored).abs()
    if gap.isnan().any():
        i = tuple(int(k) for k in gap.isnan().nonzero()[0])
        raise AssertionError(f"CrossAttention's output holds NaN, first at {i}: a softmax over "
                             "scores that are all -inf (padding masked over the wrong axis?)")
    i = tuple(int(k) for k in torch.unravel_index(gap.argmax(), gap.shape))
    assert gap[i] <= 1e-4, (
        f"CrossAttention's output is {out[i].item():.5f} at {i}, stored {stored[i].item():.5f}: "
        f"the largest difference, {gap[i].item():.3g}; check the scaling of the scores by "
        "1 / sqrt(C), the softmax over the tokens, and self.proj before adding x")


def test_a_unet_that_reads_a_prompt():
    torch.manual_seed(0)
    encoder = captions.TextEncoder(dim=32)
    net = UNet(**dict(PRESETS["cpu"], context_dim=32))
    # the last conv starts at zero: make the output visible
    torch.nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    context, mask = encoder(captions.tokenize(["a thick seven", "a thick seven"]))
    other, other_mask = encoder(captions.tokenize(["one", "one"]))
    eps_hat = net(x, t, context=context, mask=mask)
    assert eps_hat.shape == x.shape
    assert not torch.allclose(eps_hat, net(x, t, context=other, mask=other_mask))
    assert UNet(**net.config).config == net.config  # as a checkpoint stores it
    with pytest.raises(ValueError, match="context_dim"):
        net(x, t)
    with pytest.raises(ValueError, match="context_dim"):
        UNet()(x, t, context=context, mask=mask)


def test_part2_nets_are_unchanged():
    assert "context_dim" not in UNet().config
    assert not any("cross" in name for name in UNet().state_dict())
