"""Part 3's way in for the text: cross-attention in unet.py, and a U-Net that reads a prompt."""
import pytest
import torch

import captions
from unet import PRESETS, CrossAttention, UNet


def setup(L=5, real=(3, 1), ch=16, dim=12, seed=0):
    torch.manual_seed(seed)
    layer = CrossAttention(ch, dim, groups=4)
    x, context = torch.randn(len(real), ch, 7, 7), torch.randn(len(real), L, dim)
    # the first `real` tokens are words
    mask = torch.arange(L)[None, :] < torch.tensor(real)[:, None]
    return layer, x, context, mask


def test_shape_and_one_token_gets_all_the_weight():
    layer, x, context, mask = setup(real=(1, 1))
    out = layer(x, context, mask)
    assert out.shape == x.shape
    # With one real token its softmax weight is 1 at every position: x plus the projection of its
    # value.
    expected = x + layer.proj(layer.v(context[:, 0]))[:, :, None, None]
    assert torch.allclose(out, expected, atol=1e-5)


def test_padding_does_not_change_the_output():
    layer, x, context, mask = setup(real=(3, 1))
    out = layer(x, context, mask)
    scrambled = torch.where(mask[:, :, None], context, 1e3 * torch.randn_like(context))
    assert torch.allclose(layer(x, scrambled, mask), out, atol=1e-5)  # padded tokens: weight 0
    more = torch.cat([context, torch.randn(2, 4, context.shape[2])], dim=1)
    more_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    assert torch.allclose(layer(x, more, more_mask), out, atol=1e-5)  # extra padding
    # the real tokens matter
    assert not torch.allclose(layer(x, context.roll(1, dims=1), mask), out)


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
