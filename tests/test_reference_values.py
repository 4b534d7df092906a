"""The numbers stored in tests/reference_values.json, how they are made, and the checks that need the
exercises' formulas written out.

    python tests/test_reference_values.py     # recompute the numbers from the reference and rewrite the file

The graded tests compare results that have no closed form (one sampler step on given inputs, the cosine
schedule's alpha_bar, the outputs of the ResBlock and of cross-attention, the exact moments of a sampler's
output) with these numbers. They are computed once, here, from the reference solutions, and the moments from
the papers' formulas written out independently of schedule.py. Students get the JSON file, numbers only;
make_assignment.py leaves this file out of the student edition, because it spells out what the exercises
ask for (Eqs. 7, 11, 12 and 16, the cosine schedule, the timestep embedding, the ResBlock layer by layer,
cross-attention).

Rerun it after changing anything the numbers depend on: the reference solutions, or the stand-in schedules,
toy_model, the step inputs (tests/test_schedule.py), resblock_case (tests/test_unet.py) or
cross_attention_case (tests/test_cross_attention.py).
test_stored_values_are_up_to_date fails until you do.
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # as a script
from schedule import SCHEDULES, Schedule  # noqa: E402
from test_schedule import (MU, SD, SHAPES, close, eps_star, stand_in, step_inputs,  # noqa: E402
                           toy_model)
from test_cross_attention import cross_attention_case  # noqa: E402
from test_unet import resblock_case  # noqa: E402
from unet import timestep_embedding  # noqa: E402

PATH = Path(__file__).resolve().parent / "reference_values.json"


# --- the papers' formulas, written out independently of schedule.py and unet.py -----------------------------

def cosine_alpha_bar(T, s=0.008):
    """Nichol & Dhariwal 2021, Eq. 17, with each beta capped at 0.999 as make_betas does: alpha_bar_t, t = 0..T-1."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def embedding(t, dim):
    """[sin(t w_k), cos(t w_k)], w_k = 10000^(-2k / dim), k < dim / 2, in float64."""
    w = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.as_tensor(t, dtype=torch.float64)[:, None] * w
    return torch.cat([angles.sin(), angles.cos()], 1), w


def exact_moments(step, n):
    """Mean and std of the discrete sampler's output, exactly. With eps* affine in x, each of the n steps is
    x -> A_k x + c_k + sigma_k z, so x_T ~ N(0, 1) stays Gaussian; `step(x)` applies all n noise-free steps
    to a column x of shape (n, 1) at once and returns them with sigma_k^2, which gives every A_k and c_k."""
    c, var = step(torch.zeros(n, 1, dtype=torch.float64))
    A = step(torch.ones(n, 1, dtype=torch.float64))[0] - c
    m, v = 0.0, 1.0
    for A_k, c_k, var_k in zip(A.flatten().tolist(), c.flatten().tolist(), var.flatten().tolist()):
        m, v = A_k * m + c_k, A_k ** 2 * v + var_k
    return m, math.sqrt(v)


def ddpm_moments(s, variance):
    t = torch.arange(s.T - 1, -1, -1)  # sampling order
    beta, alpha, a = (table[t, None] for table in (s.betas, s.alphas, s.alphas_cumprod))
    beta_tilde = beta * (1 - s.alphas_cumprod_prev[t, None]) / (1 - a)  # Eq. 7
    sigma2 = (beta if variance == "beta" else beta_tilde) * (t[:, None] > 0)  # Algorithm 2

    def step(x):  # Eq. 11
        return (x - beta / (1 - a).sqrt() * eps_star(s)(x, t)) / alpha.sqrt(), sigma2
    return exact_moments(step, s.T)


def ddim_moments(s, steps, eta):
    timesteps = s.ddim_timesteps(steps)
    t, t_prev = torch.tensor(timesteps), torch.tensor(timesteps[1:] + [-1])
    a = s.alphas_cumprod[t, None]
    p = torch.where(t_prev >= 0, s.alphas_cumprod[t_prev.clamp(min=0)], 1.0)[:, None]
    sigma2 = eta ** 2 * (1 - p) / (1 - a) * (1 - a / p)  # Song et al. 2021, Eq. 16

    def step(x):  # Eq. 12
        eps = eps_star(s)(x, t)
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return p.sqrt() * x0_hat + (1 - p - sigma2).sqrt() * eps, sigma2
    return exact_moments(step, steps)


# --- the stored numbers ---------------------------------------------------------------------------------------

def make_reference_values():
    """Every number of reference_values.json, as a dict (see the module docstring)."""
    values = dict(cosine_alpha_bar={}, ddpm_step=[], ddim_step=[], ddpm_moments={}, ddim_moments={})
    for T in (7, 37, 1000):
        ab = cosine_alpha_bar(T)
        values["cosine_alpha_bar"][str(T)] = {str(t): ab[t].item()
                                             for t in sorted({0, 1, T // 4, T // 2, 3 * T // 4, T - 2, T - 1})}
    t = [0.5, 1.0, 37.0, 999.0]
    emb, w = embedding(t, 16)
    values["embedding"] = dict(t=t, dim=16, values=emb.tolist(), frequencies=w.tolist())
    block, x, emb = resblock_case()
    with torch.no_grad():
        values["resblock"] = block(x, emb).double().tolist()
        layer, x, context, mask = cross_attention_case()
        values["cross_attention"] = layer(x, context, mask).double().tolist()
    # the posterior that exercise 6's tests put in place of q_posterior (its mean is linear)
    s, t = stand_in(30), torch.arange(30)
    one, zero = torch.ones(30, 1, dtype=torch.float64), torch.zeros(30, 1, dtype=torch.float64)
    x0_weight, variance, log_variance = s.q_posterior(one, zero, t)
    x_t_weight = s.q_posterior(zero, one, t)[0]
    values["stand_in_posterior"] = {name: v.flatten().tolist() for name, v in dict(
        x0_weight=x0_weight, x_t_weight=x_t_weight, variance=variance,
        log_variance=log_variance).items()}
    x_t, t = step_inputs()
    for variance in ("beta", "beta_tilde"):
        for clip_x0 in (False, True):  # the mean: the step without its noise, sigma_t z
            _, x0_hat = stand_in(30).p_sample(toy_model, x_t, t, clip_x0=clip_x0, variance=variance)
            mean = s.q_posterior(x0_hat, x_t, t)[0]
            values["ddpm_step"].append(dict(variance=variance, clip_x0=clip_x0, mean=mean.tolist(),
                                            x0_hat=x0_hat.tolist()))
    x_t, t, t_prev = step_inputs(ddim=True)
    a = s.alphas_cumprod[t, None]
    p = torch.where(t_prev >= 0, s.alphas_cumprod[t_prev.clamp(min=0)], 1.0)[:, None]
    for eta in (0.0, 0.5, 1.0):
        sigma = (eta ** 2 * (1 - p) / (1 - a) * (1 - a / p)).sqrt()  # Eq. 16
        for clip_x0 in (False, True):
            x_prev, x0_hat = s.ddim_step(toy_model, x_t, t, t_prev, eta=eta, clip_x0=clip_x0,
                                         generator=torch.Generator().manual_seed(7))
            z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7),
                            dtype=torch.float64)
            values["ddim_step"].append(dict(eta=eta, clip_x0=clip_x0,
                                            mean=(x_prev - sigma * z).tolist(),
                                            sigma=sigma.flatten().tolist(), x0_hat=x0_hat.tolist()))
    for power in SHAPES:
        s = stand_in(1000, power=power)
        for variance in ("beta", "beta_tilde") if power else ():  # see test_ddpm_samples_gaussian_data
            values["ddpm_moments"][f"{power}-{variance}"] = list(ddpm_moments(s, variance))
        for steps in (50, 10):
            for eta in (0.0, 0.5, 1.0):
                values["ddim_moments"][f"{power}-{steps}-{eta}"] = list(ddim_moments(s, steps, eta))
    return values


def write(values, path=PATH):
    """One top-level key per line: small diffs when a few numbers change."""
    lines = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in sorted(values.items())]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def flat(value):
    """All the numbers in a nested JSON value, in order."""
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in flat(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in flat(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_stored_values_are_up_to_date():
    stored, fresh = json.loads(PATH.read_text()), make_reference_values()
    assert sorted(stored) == sorted(fresh)
    for key in fresh:
        # float32 convolutions and matrix products differ in the last digits across CPUs
        rtol = 1e-5 if key in ("resblock", "cross_attention") else 1e-9
        a, b = torch.tensor(flat(stored[key]), dtype=torch.float64), torch.tensor(flat(fresh[key]), dtype=torch.float64)
        assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=rtol), (
            f"{key} in {PATH.name} is out of date; run python tests/test_reference_values.py")


# --- the checks that spell the formulas out (they stay in the reference) ------------------------------------

def test_the_stored_chains_reproduce_the_data():
    """With the exact eps*, DDPM's chain with T = 1000 gives the data within 1% of SD; DDIM's mean comes out
    right and its std smaller than SD (the next test says why)."""
    values = json.loads(PATH.read_text())
    for key, (m, sd) in values["ddpm_moments"].items():
        assert abs(m - MU) < 0.01 * SD and abs(sd - SD) < 0.01 * SD, (key, m, sd)
    for key, (m, sd) in values["ddim_moments"].items():
        assert abs(m - MU) < 0.01 * SD and sd < SD, (key, m, sd)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_std_gap_closes_with_more_steps(name, eta):
    """Even with the exact eps*, few DDIM steps under-disperse Gaussian data. At eta = 0, a step from a to p
    (alpha_bar at t and t_prev) maps x_t to sqrt(p) x0_hat + sqrt(1 - p) eps_hat, whose variance, when x_t has
    its true variance a SD^2 + 1 - a, is (sqrt(a p) SD^2 + sqrt((1 - a)(1 - p)))^2 / (a SD^2 + 1 - a): below
    the true p SD^2 + 1 - p by Cauchy-Schwarz, equal only if SD = 1 or p = a. The gap shrinks with the step
    size, and with all 1000 steps the std is within 1% of SD."""
    s = Schedule(name, 1000)
    sd10, sd50, sd1000 = (ddim_moments(s, steps, eta)[1] for steps in (10, 50, 1000))
    assert sd10 < sd50 < sd1000 and abs(sd1000 - SD) < 0.01 * SD, (sd10, sd50, sd1000)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(SCHEDULES), T=st.integers(1, 300), variance=st.sampled_from(["beta", "beta_tilde"]),
       seed=st.integers(0, 2 ** 31))
def test_ddpm_step_two_routes_agree(name, T, variance, seed):
    """Without clipping, "x_0_hat (Eq. 15) then the posterior mean (Eq. 7)" is Eq. 11, plus sigma_t z."""
    s, g = Schedule(name, T), torch.Generator().manual_seed(seed)
    x_t = 2 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (32,), generator=g)
    x_prev, _ = s.p_sample(toy_model, x_t, t, generator=torch.Generator().manual_seed(seed), clip_x0=False,
                           variance=variance)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    beta, alpha, a = (v[t][:, None] for v in (s.betas, s.alphas, s.alphas_cumprod))
    sigma2 = beta if variance == "beta" else s.q_posterior(x_t, x_t, t)[1]
    eq11 = (x_t - beta / (1 - a).sqrt() * toy_model(x_t, t)) / alpha.sqrt()
    close(x_prev, eq11 + (t > 0)[:, None] * sigma2.sqrt() * z, "p_sample against Eq. 11", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_over_consecutive_steps_is_ddpm_beta_tilde(clip_x0):
    """The graded test compares with stored DDPM samples; here both samplers run, on a named schedule."""
    s = Schedule("cosine", 40)
    ddpm, _ = s.p_sample_loop(toy_model, (16, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64,
                              clip_x0=clip_x0, variance="beta_tilde")
    ddim, _ = s.ddim_sample_loop(toy_model, (16, 3), steps=40, eta=1.0, generator=torch.Generator().manual_seed(5),
                                 dtype=torch.float64, clip_x0=clip_x0)
    close(ddim, ddpm, "DDIM eta = 1 against DDPM beta_tilde", rtol=1e-10, atol=1e-10)


def test_cosine_schedule_is_nichol_and_dhariwal():
    """alpha_bar_t = f(t) / f(0) wherever the 0.999 cap did not bite (only at the very end)."""
    for T in (1000, 37, 7):
        close(Schedule("cosine", T).alphas_cumprod, cosine_alpha_bar(T), f"cosine, T = {T}", rtol=1e-12, atol=0)


def test_embedding_follows_its_docstring():
    t = torch.tensor([0.5, 1.0, 37.0, 999.0, 0.0, 5.0])
    for dim in (8, 16, 64):
        # float32 angles up to 999 are off by ~1e-4 at most
        assert torch.allclose(timestep_embedding(t, dim).double(), embedding(t, dim)[0], atol=1e-3)


def test_resblock_follows_its_docstring_layer_by_layer():
    block, x, emb = resblock_case()

    def conv_after_norm(h, norm, conv):                                       # GroupNorm, SiLU, 3x3 conv
        return F.conv2d(F.silu(F.group_norm(h, norm.num_groups, norm.weight, norm.bias)), conv.weight, conv.bias,
                        padding=1)
    with torch.no_grad():
        h = conv_after_norm(x, block.norm1, block.conv1)
        h = h + F.linear(F.silu(emb), block.time.weight, block.time.bias)[:, :, None, None]
        expected = F.conv2d(x, block.skip.weight, block.skip.bias) + conv_after_norm(h, block.norm2, block.conv2)
        assert torch.allclose(block(x, emb), expected, atol=1e-5)             # eval mode: dropout is off



def test_cross_attention_follows_its_docstring():
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) from the image's positions to the
    real tokens, written out for one position and one prompt at a time."""
    layer, x, context, mask = cross_attention_case()
    B, C, H, W = x.shape
    with torch.no_grad():
        out = layer(x, context, mask)
        h = layer.norm(x)
        for b in range(B):
            tokens = context[b][mask[b]]                                  # the real tokens only
            keys, values = layer.k(tokens), layer.v(tokens)
            for i in range(H):
                for j in range(W):
                    query = layer.q(h[b, :, i, j])
                    weights = torch.softmax(keys @ query / math.sqrt(C), dim=0)
                    expected = x[b, :, i, j] + layer.proj(weights @ values)
                    assert torch.allclose(out[b, :, i, j], expected, atol=1e-5), (b, i, j)


if __name__ == "__main__":
    write(make_reference_values())
    print(f"wrote {PATH}")
