"""Tests for unet.py: the timestep embedding and the ResBlock alone, then the whole net: shapes, conditioning
on t and y, gradient flow, seeding, learning, bad input.

The final convolution starts at zero, so the untrained net predicts eps = 0 exactly, whatever x, t and y.
Tests that need the output to depend on its inputs first give that layer small random weights, which is
what a few optimiser steps would do, only without depending on the optimiser.

@pytest.mark.ex8 / ex9 grade exercises 8 (the timestep embedding) and 9 (the ResBlock) of the student
edition (make_assignment.py); a test of the whole net runs both, so it names the other in `depends`.
"""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from unet import PRESETS, ResBlock, UNet, timestep_embedding

# Small enough to be quick, large enough to have every part: 3 levels (16 -> 8 -> 4), 2 ResBlocks each,
# attention at the lowest level.
TINY = dict(image_size=16, in_channels=1, base_channels=8, channel_mults=[1, 2, 2], num_res_blocks=2,
            attention=[2], norm_groups=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny: a second thread only adds synchronisation, which costs seconds per test when
    # another process is busy on the same cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unzero_output(model, seed=0):
    """Give every zero-initialised convolution small random weights and biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                for p in m.parameters():
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def make(**overrides):
    torch.manual_seed(0)
    return unzero_output(UNet(**dict(TINY, **overrides))).eval()


# --- exercise 8: the timestep embedding ---------------------------------------------------------------

@pytest.mark.ex8
@pytest.mark.parametrize("dim", [8, 16, 64])
def test_embedding_at_t0_is_sin_0_then_cos_1(dim):
    emb = timestep_embedding(torch.zeros(3, dtype=torch.long), dim)
    assert emb.shape == (3, dim) and emb.dtype == torch.float32
    assert torch.all(emb[:, :dim // 2] == 0) and torch.all(emb[:, dim // 2:] == 1)


@pytest.mark.ex8
def test_embedding_frequencies_fall_geometrically_from_1():
    dim, half = 16, 8
    w = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)         # the docstring's w_k
    emb = timestep_embedding(torch.tensor([1]), dim)[0].double()
    # at t = 1 the angles are the frequencies themselves, all in (0, 1], so atan2 recovers them
    assert torch.allclose(torch.atan2(emb[:half], emb[half:]), w, rtol=1e-5)
    t = torch.tensor([0.5, 1.0, 37.0, 999.0])                                  # float timesteps work too
    angles = t.double()[:, None] * w
    # float32 angles up to 999 are off by ~1e-4 at most
    assert torch.allclose(timestep_embedding(t, dim).double(), torch.cat([angles.sin(), angles.cos()], 1), atol=1e-3)


@pytest.mark.ex8
@pytest.mark.parametrize("dim", [8, 16])
def test_embedding_tells_every_timestep_apart(dim):
    emb = timestep_embedding(torch.arange(1000), dim).double()
    distance = torch.cdist(emb, emb).fill_diagonal_(math.inf)
    assert distance.min() > 0.1, distance.min()   # each (sin, cos) pair lies on the unit circle: O(1) apart


# --- exercise 9: the residual block -------------------------------------------------------------------

def random_block(in_ch, out_ch, emb_dim=12, dropout=0.0, seed=0):
    """A ResBlock with every parameter random, so that a layer left out or swapped changes the result."""
    torch.manual_seed(seed)
    block = ResBlock(in_ch, out_ch, emb_dim, dropout, groups=4).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    return block


@pytest.mark.ex9
@pytest.mark.parametrize("in_ch, out_ch", [(8, 8), (8, 16), (16, 8)])
def test_resblock_maps_in_channels_to_out_channels(in_ch, out_ch):
    x, emb = torch.randn(2, in_ch, 6, 4), torch.randn(2, 12)
    with torch.no_grad():
        assert random_block(in_ch, out_ch)(x, emb).shape == (2, out_ch, 6, 4)


@pytest.mark.ex9
@pytest.mark.parametrize("in_ch, out_ch", [(8, 8), (8, 16)])
def test_resblock_is_its_skip_path_when_the_last_conv_is_zero(in_ch, out_ch):
    block = random_block(in_ch, out_ch)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
        x = torch.randn(2, in_ch, 5, 5)
        out = block(x, torch.randn(2, 12))
    if in_ch == out_ch:
        assert torch.equal(out, x)                                            # the identity, exactly
    else:
        assert torch.allclose(out, F.conv2d(x, block.skip.weight, block.skip.bias), atol=1e-6)   # the 1x1 conv


@pytest.mark.ex9
def test_resblock_output_depends_on_the_embedding_through_its_time_layer():
    block = random_block(8, 16)
    x = torch.randn(1, 8, 5, 5).expand(2, -1, -1, -1)                         # one image, two embeddings
    emb = torch.randn(2, 12)
    with torch.no_grad():
        out = block(x, emb)
        assert not torch.allclose(out[0], out[1], atol=1e-4)
        block.time.weight.zero_()
        block.time.bias.zero_()
        out = block(x, emb)
    assert torch.allclose(out[0], out[1], atol=1e-6)


@pytest.mark.ex9
def test_resblock_follows_its_docstring_layer_by_layer():
    block = random_block(8, 16, dropout=0.5)
    x, emb = torch.randn(3, 8, 5, 5), torch.randn(3, 12)

    def conv_after_norm(h, norm, conv):                                       # GroupNorm, SiLU, 3x3 conv
        return F.conv2d(F.silu(F.group_norm(h, norm.num_groups, norm.weight, norm.bias)), conv.weight, conv.bias,
                        padding=1)
    with torch.no_grad():
        h = conv_after_norm(x, block.norm1, block.conv1)
        h = h + F.linear(F.silu(emb), block.time.weight, block.time.bias)[:, :, None, None]
        expected = F.conv2d(x, block.skip.weight, block.skip.bias) + conv_after_norm(h, block.norm2, block.conv2)
        assert torch.allclose(block(x, emb), expected, atol=1e-5)             # eval mode: dropout is off
        block.train()
        assert not torch.allclose(block(x, emb), block(x, emb))               # train mode: dropout is on


# --- the whole network --------------------------------------------------------------------------------


@pytest.mark.ex9(depends=[8])
@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_output_shape_equals_input_shape(size, channels, batch):
    model = make(image_size=size, in_channels=channels)
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        eps = model(x, torch.randint(0, 1000, (batch,)))
    assert eps.shape == x.shape and eps.dtype == x.dtype


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_for_mnist_and_cifar_shapes(preset):
    # The training script overrides image_size / in_channels / num_classes on a preset; all must work.
    for size, channels in [(28, 1), (32, 3)]:
        cfg = dict(PRESETS[preset], image_size=size, in_channels=channels, num_classes=10)
        model = UNet(**cfg)
        assert UNet(**json.loads(json.dumps(model.config))).config == model.config   # as a checkpoint stores it
        if preset == "cpu":                      # the gpu preset is too slow to run here; building it suffices
            x = torch.randn(2, channels, size, size)
            with torch.no_grad():
                assert model(x, torch.tensor([0, 999]), torch.tensor([3, 10])).shape == x.shape


def test_defaults_are_the_cpu_preset():
    assert UNet().config == UNet(**PRESETS["cpu"]).config


def test_zero_init_output_is_exactly_zero():
    torch.manual_seed(0)
    model = UNet(**TINY)
    with torch.no_grad():
        assert torch.all(model(torch.randn(2, 1, 16, 16), torch.tensor([5, 500])) == 0)


@pytest.mark.ex8(depends=[9])
def test_different_t_gives_different_output():
    model = make()
    x = torch.randn(1, 1, 16, 16).expand(4, -1, -1, -1)   # one image, four timesteps
    with torch.no_grad():
        eps = model(x, torch.tensor([0, 1, 500, 999]))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(eps[i], eps[j], atol=1e-6), (i, j)


def test_labels_change_output_and_null_label_is_the_default():
    model = make(num_classes=10)
    x = torch.randn(1, 1, 16, 16).expand(11, -1, -1, -1)  # one image, labels 0..9 and the null label 10
    t = torch.full((11,), 300)
    with torch.no_grad():
        eps = model(x, t, torch.arange(11))
        eps_none = model(x, t)                              # y=None means the null label
        eps_null = model(x, t, torch.full((11,), 10))
    for i in range(11):
        for j in range(i + 1, 11):
            assert not torch.allclose(eps[i], eps[j], atol=1e-6), (i, j)
    assert torch.equal(eps_none, eps_null)
    assert torch.allclose(eps_null, eps[10:].expand(11, -1, -1, -1), atol=1e-6)


@pytest.mark.ex9(depends=[8])
def test_gradients_reach_every_parameter():
    model = make(num_classes=10, dropout=0.1).train()
    x = torch.randn(4, 1, 16, 16)
    model(x, torch.randint(0, 1000, (4,)), torch.tensor([0, 1, 2, 10])).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_same_seed_same_weights_different_seed_different_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return UNet(**TINY).state_dict()
    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_few_dozen_steps_drive_the_denoising_loss_down():
    # Algorithm 1 on a fixed tiny batch with a fixed noise draw: the net must fit it quickly.
    torch.manual_seed(0)
    model = UNet(**TINY)
    x0 = torch.zeros(8, 1, 16, 16)
    x0[:, :, 4:12, 6:10] = 1.0                            # eight "ones"
    alpha_bar = torch.linspace(0.9, 0.1, 8)[:, None, None, None]
    eps = torch.randn_like(x0)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    t = torch.linspace(100, 900, 8).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (model(x_t, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(eps.pow(2).mean().item())   # zero init: the first loss is E[eps^2]
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.parametrize("overrides, words", [
    (dict(image_size=30), "divisible by 2**(len(channel_mults)-1) = 4"),
    (dict(image_size=28, channel_mults=[1, 2, 2, 2]), "divisible by 2**(len(channel_mults)-1) = 8"),
    (dict(base_channels=10), "GroupNorm needs every channel count divisible by norm_groups=4"),
    (dict(attention=[3]), "attention lists level indices 0..2"),
    (dict(num_classes=0), "num_classes must be None"),
    (dict(dropout=1.0), "dropout must be in [0, 1)"),
])
def test_bad_configuration_raises_value_error_naming_the_constraint(overrides, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        UNet(**dict(TINY, **overrides))


@pytest.mark.parametrize("y, words", [
    (torch.tensor([0, 11]), r"labels must lie in \[0, num_classes\] = \[0, 10\]"),
    (torch.tensor([-1, 3]), r"labels must lie in \[0, num_classes\] = \[0, 10\]"),
    (torch.tensor([0.0, 1.0]), "y must be an integer tensor"),
    (torch.tensor([1, 2, 3]), r"y must be an integer tensor of shape \(2,\)"),
])
def test_bad_labels_raise_value_error(y, words):
    model = make(num_classes=10)
    with pytest.raises(ValueError, match=words):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), y)


def test_bad_shapes_and_labels_on_unconditional_model_raise_value_error():
    model = make()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 16, 16\), got \(2, 1, 28, 28\)"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.tensor([1, 2]))
