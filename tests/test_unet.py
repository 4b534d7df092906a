"""Tests for unet.py: the timestep embedding and the ResBlock alone, then the whole net: shapes,
conditioning on t and y, gradient flow, seeding, learning, bad input.

The final convolution starts at zero, so the untrained net predicts eps_hat = 0 exactly, whatever x,
t and y. Tests that need the output to depend on its inputs first give that layer small random
weights, which is what a few optimiser steps would do, only without depending on the optimiser.

@pytest.mark.ex8 / ex9 grade exercises 8 (the timestep embedding) and 9 (the ResBlock) of the
student edition. A graded test of the whole net runs one of the two and puts a
stand-in for the other (`stand_in_embedding`, `stand_in_resblock`), so that a mistake in one costs
no points in the other. Where a result has no closed form, it is compared with
tests/reference_values.json, which the reference solution computed once.
"""
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import unet
from unet import PRESETS, ResBlock, UNet, timestep_embedding

REFERENCE = json.loads((Path(__file__).parent / "reference_values.json").read_text())

# Small enough to be quick, large enough to have every part: 3 levels (16 -> 8 -> 4), 2 ResBlocks
# each, attention at the lowest level.
TINY = dict(image_size=16, in_channels=1, base_channels=8, channel_mults=[1, 2, 2],
            num_res_blocks=2, attention=[2], norm_groups=4)



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


# --- exercise 8: the timestep embedding -----------------------------------------------------------

def largest_gap(actual, expected):
    """(largest |actual - expected|, the index where it is) of two tensors of one shape; where
    actual holds a NaN: (nan, the first NaN's index)."""
    gap = (actual.double() - torch.as_tensor(expected, dtype=torch.float64)).abs()
    if gap.isnan().any():
        return math.nan, tuple(int(k) for k in gap.isnan().nonzero()[0])
    i = tuple(int(k) for k in torch.unravel_index(gap.argmax(), gap.shape))
    return gap.max().item(), i


def off_by(gap):
    """How far off, in words: 'NaN appeared' for a NaN gap."""
    return "NaN appeared" if math.isnan(gap) else f"off by {gap:.3g}"


@pytest.mark.ex8
@pytest.mark.parametrize("dim", [8, 16, 64])
def test_embedding_at_t0_is_sin_0_then_cos_1(dim):
    emb = timestep_embedding(torch.zeros(3, dtype=torch.long), dim)
    assert emb.shape == (3, dim) and emb.dtype == torch.float32, (
        f"timestep_embedding(t of shape (3,), {dim}) returned {emb.dtype} of shape "
        f"{tuple(emb.shape)}; expected float32 of shape (3, {dim})")
    assert torch.all(emb[:, :dim // 2] == 0) and torch.all(emb[:, dim // 2:] == 1), (
        f"timestep_embedding at t = 0, dim = {dim}: {emb[0].tolist()}; expected sin(0) = 0 in the "
        "first half and cos(0) = 1 in the second")


@pytest.mark.ex8
def test_embedding_frequencies_fall_geometrically_from_1():
    stored = REFERENCE["embedding"]
    dim, half = stored["dim"], stored["dim"] // 2
    w = torch.tensor(stored["frequencies"], dtype=torch.float64)
    emb = timestep_embedding(torch.tensor([1]), dim)[0].double()
    # at t = 1 the angles are the frequencies themselves, all in (0, 1], so atan2 recovers them
    found = torch.atan2(emb[:half], emb[half:])
    assert torch.allclose(found, w, rtol=1e-5), (
        f"timestep_embedding at t = 1, dim = {dim}: its frequencies (the angles of the (sin, cos) "
        f"pairs) are {[round(v, 6) for v in found.tolist()]}; expected the docstring's w_k = "
        f"{[round(v, 6) for v in w.tolist()]}")
    t = torch.tensor(stored["t"])                                   # float timesteps work too
    got = timestep_embedding(t, dim)
    gap, (i, k) = largest_gap(got, stored["values"])
    # float32 angles up to 999 are off by ~1e-4 at most
    assert gap <= 1e-3, (f"timestep_embedding(t = {t[i].item()}, dim = {dim}), entry {k}: "
                         f"{got[i, k].item():.6f}, expected {stored['values'][i][k]:.6f} "
                         "([sin(t w_k), cos(t w_k)], stored)")


@pytest.mark.ex8
@pytest.mark.parametrize("dim", [8, 16])
def test_embedding_tells_every_timestep_apart(dim):
    emb = timestep_embedding(torch.arange(1000), dim).double()
    distance = torch.cdist(emb, emb).fill_diagonal_(math.inf)
    i, j = divmod(int(distance.argmin()), 1000)
    assert distance.min() > 0.1, (f"timestep_embedding, dim = {dim}: t = {i} and t = {j} are only "
                                  f"{distance.min().item():.3g} apart; expected every pair of t "
                                  "in 0..999 more than 0.1 apart (each (sin, cos) pair lies on the "
                                  "unit circle)")


# --- exercise 9: the residual block ---------------------------------------------------------------

def random_block(in_ch, out_ch, emb_dim=12, dropout=0.0, seed=0):
    """A ResBlock with every parameter random, so that a layer left out or swapped changes the
    result."""
    torch.manual_seed(seed)
    block = ResBlock(in_ch, out_ch, emb_dim, dropout, groups=4).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    return block


def resblock_case():
    """The ResBlock, x and emb whose output tests/reference_values.json stores."""
    block = random_block(8, 16, dropout=0.5)
    g = torch.Generator().manual_seed(1)
    return block, torch.randn(2, 8, 3, 3, generator=g), torch.randn(2, 12, generator=g)


@pytest.mark.ex9
@pytest.mark.parametrize("in_ch, out_ch", [(8, 8), (8, 16), (16, 8)])
def test_resblock_maps_in_channels_to_out_channels(in_ch, out_ch):
    x, emb = torch.randn(2, in_ch, 6, 4), torch.randn(2, 12)
    with torch.no_grad():
        shape = tuple(random_block(in_ch, out_ch)(x, emb).shape)
    assert shape == (2, out_ch, 6, 4), (
        f"ResBlock({in_ch} -> {out_ch} channels) maps x of shape (2, {in_ch}, 6, 4) to {shape}; "
        f"expected (2, {out_ch}, 6, 4)")


@pytest.mark.ex9
@pytest.mark.parametrize("in_ch, out_ch", [(8, 8), (8, 16)])
def test_resblock_is_its_skip_path_when_the_last_conv_is_zero(in_ch, out_ch):
    block = random_block(in_ch, out_ch)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
        x = torch.randn(2, in_ch, 5, 5)
        out = block(x, torch.randn(2, 12))
    # the identity, or the 1x1 conv
    skip = x if in_ch == out_ch else F.conv2d(x, block.skip.weight, block.skip.bias)
    gap, i = largest_gap(out, skip)
    path = 'x itself' if in_ch == out_ch else 'the 1x1 conv of x'
    assert gap <= 1e-6, (f"ResBlock({in_ch} -> {out_ch}) with its last conv zeroed should be its "
                         f"skip path ({path}): {off_by(gap)} at {i}; the residual is "
                         "skip(x) + h")


@pytest.mark.ex9
def test_resblock_output_depends_on_the_embedding_through_its_time_layer():
    block = random_block(8, 16)
    x = torch.randn(1, 8, 5, 5).expand(2, -1, -1, -1)                   # one image, two embeddings
    emb = torch.randn(2, 12)
    with torch.no_grad():
        out = block(x, emb)
        assert not torch.allclose(out[0], out[1], atol=1e-4), (
            "ResBlock: one image with two different time embeddings gave the same output; add the "
            "time layer's projection of emb between the two convolutions")
        block.time.weight.zero_()
        block.time.bias.zero_()
        out = block(x, emb)
    assert torch.allclose(out[0], out[1], atol=1e-6), (
        "ResBlock: with block.time zeroed, two embeddings still change the output; emb should "
        "enter only through self.time")


@pytest.mark.ex9
def test_resblock_follows_its_docstring_layer_by_layer():
    """Against the reference's output for the same weights and inputs (stored): any layer left out,
    swapped or added changes it."""
    block, x, emb = resblock_case()
    with torch.no_grad():
        out = block(x, emb)
        assert out.shape == (2, 16, 3, 3), (f"ResBlock(8 -> 16) returned shape {tuple(out.shape)}; "
                                            "expected (2, 16, 3, 3)")
        gap, i = largest_gap(out, REFERENCE["resblock"])
        expected = torch.tensor(REFERENCE['resblock'])[i]
        assert gap <= 1e-4, (f"ResBlock output {out[i].item():.5f} at {i}, expected {expected:.5f} "
                             f"(stored; the largest difference: {off_by(gap)}): check the order "
                             "of the "
                             "docstring, GroupNorm, SiLU, 3x3 conv, + time, GroupNorm, SiLU, "
                             "dropout, 3x3 conv, plus the skip path")
        block.train()
        assert not torch.allclose(block(x, emb), block(x, emb)), (
            "ResBlock in train mode gave the same output twice: apply self.dropout (train mode: "
            "dropout is on)")


# --- the whole network ----------------------------------------------------------------------------


def stand_in_embedding(t, dim):
    """Stands in for exercise 8's timestep_embedding in exercise 9's tests of the whole net:
    (t / 1000)^k for k = 1..dim, not the sinusoids, but a different vector for every t, which is all
    the net needs here."""
    return (t.float()[:, None] / 1000) ** torch.arange(1, dim + 1, device=t.device)


def stand_in_resblock(self, x, emb):
    """Stands in for exercise 9's ResBlock.forward in exercise 8's tests of the whole net: the skip
    path plus the mean of emb, not the docstring's block, but one through which t reaches the
    output."""
    return self.skip(x) + emb.mean(1).view(-1, 1, 1, 1)


@pytest.mark.ex9
@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_output_shape_equals_input_shape(size, channels, batch, monkeypatch):
    monkeypatch.setattr(unet, "timestep_embedding", stand_in_embedding)
    model = make(image_size=size, in_channels=channels)
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        eps_hat = model(x, torch.randint(0, 1000, (batch,)))
    assert eps_hat.shape == x.shape and eps_hat.dtype == x.dtype, (
        f"the U-Net (with your ResBlock, and a stand-in for exercise 8's timestep_embedding) maps "
        f"x {tuple(x.shape)} {x.dtype} to {tuple(eps_hat.shape)} {eps_hat.dtype}; expected the "
        "same shape and dtype")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_for_mnist_and_cifar_shapes(preset):
    # The training script overrides image_size / in_channels / num_classes on a preset; all must
    # work.
    for size, channels in [(28, 1), (32, 3)]:
        cfg = dict(PRESETS[preset], image_size=size, in_channels=channels, num_classes=10)
        model = UNet(**cfg)
        # as a checkpoint stores it
        assert UNet(**json.loads(json.dumps(model.config))).config == model.config
        # the gpu preset is too slow to run here; building it suffices
        if preset == "cpu":
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


@pytest.mark.ex8
def test_different_t_gives_different_output(monkeypatch):
    monkeypatch.setattr(ResBlock, "forward", stand_in_resblock)
    model = make()
    x = torch.randn(1, 1, 16, 16).expand(4, -1, -1, -1)   # one image, four timesteps
    t = [0, 1, 500, 999]
    with torch.no_grad():
        eps_hat = model(x, torch.tensor(t))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(eps_hat[i], eps_hat[j], atol=1e-6), (
                f"the U-Net (with your timestep embedding, and a stand-in for exercise 9's "
                f"ResBlock) gives the same output at t = {t[i]} and t = {t[j]}; the embedding "
                "should differ")


def test_labels_change_output_and_null_label_is_the_default():
    model = make(num_classes=10)
    # one image, labels 0..9 and the null label 10
    x = torch.randn(1, 1, 16, 16).expand(11, -1, -1, -1)
    t = torch.full((11,), 300)
    with torch.no_grad():
        eps_hat = model(x, t, torch.arange(11))
        eps_hat_none = model(x, t)                          # y=None means the null label
        eps_hat_null = model(x, t, torch.full((11,), 10))
    for i in range(11):
        for j in range(i + 1, 11):
            assert not torch.allclose(eps_hat[i], eps_hat[j], atol=1e-6), (i, j)
    assert torch.equal(eps_hat_none, eps_hat_null)
    assert torch.allclose(eps_hat_null, eps_hat[10:].expand(11, -1, -1, -1), atol=1e-6)


@pytest.mark.ex9
def test_gradients_reach_every_parameter(monkeypatch):
    monkeypatch.setattr(unet, "timestep_embedding", stand_in_embedding)
    model = make(num_classes=10, dropout=0.1).train()
    x = torch.randn(4, 1, 16, 16)
    model(x, torch.randint(0, 1000, (4,)), torch.tensor([0, 1, 2, 10])).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, (
            f"no gradient reaches {name} (with a stand-in for exercise 8's timestep_embedding): "
            "every layer of ResBlock.__init__ should take part in forward")


def test_same_seed_same_weights_different_seed_different_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return UNet(**TINY).state_dict()
    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_few_dozen_steps_drive_the_fitting_error_down():
    # Fit a fixed target for a fixed tiny noisy batch (eight "ones", more noise at larger t): the
    # net must learn it quickly. (Not the diffusion loss, which is exercise 10's to write.)
    torch.manual_seed(0)
    model = UNet(**TINY)
    x0 = torch.zeros(8, 1, 16, 16)
    x0[:, :, 4:12, 6:10] = 1.0                            # eight "ones"
    x_t = x0 + torch.randn_like(x0) * torch.linspace(0.3, 0.95, 8)[:, None, None, None]
    target = torch.randn_like(x0)
    t = torch.linspace(100, 900, 8).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    trace = []
    for _ in range(30):
        loss = F.l1_loss(model(x_t, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        trace.append(loss.item())
    # zero init: the first error is E|target|
    assert trace[0] == pytest.approx(target.abs().mean().item())
    assert trace[-1] < 0.5 * trace[0], trace


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
    shape_error = r"x must have shape \(B, 1, 16, 16\), got \(2, 1, 28, 28\)"
    with pytest.raises(ValueError, match=shape_error):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.tensor([1, 2]))
