"""Tests that prove schedule.py's math: the tables, the forward process, and both samplers end to
end.

Statistical checks derive their tolerance from the sample size: a sample mean of N draws with
standard deviation sd is off by sd / sqrt(N) on average, a sample std by sd / sqrt(2 (N - 1)); we
allow Z of those, with Z chosen so that a correct implementation fails one comparison with
probability 1e-6.

@pytest.mark.exN grades a test as part of exercise N of the student edition;
its `depends` lists the other exercises whose code the test also runs. Unmarked tests check code
students are given. Each exercise is graded on its own wherever that can be done without giving
another away: the tests of exercises 4-7 build their schedules from explicit betas (`stand_in`),
not with exercise 3's make_betas, and most of exercise 6's replace exercise 5's q_posterior by
its stored answer for their schedule (`with_stored_posterior`; their messages say so), so that
p_sample may take its mean through q_posterior or by Eq. 11 directly. Where a result has no closed
form, the test compares with numbers stored in tests/reference_values.json, which the reference
solution computed once.
"""
import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings, strategies as st

from schedule import SCHEDULES, Schedule, classifier_free_guidance, guided_eps, make_betas

Z = NormalDist().inv_cdf(1 - 1e-6 / 2)  # ~4.9: two-sided false-alarm rate 1e-6 per comparison
FAST = settings(max_examples=25, deadline=None)
schedules = st.sampled_from(SCHEDULES)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REFERENCE = json.loads((Path(__file__).parent / "reference_values.json").read_text())



def close(actual, expected, what, rtol=1e-7, atol=1e-7, index="index"):
    """Assert |actual - expected| <= atol + rtol |expected| everywhere (torch.testing.assert_close
    is far slower on long tensors). The message says `what` differs, where the difference is
    largest (`index` names the first dimension) and by how much, or where a NaN appeared."""
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    ok = (actual - expected).abs() <= atol + rtol * expected.abs()  # False for NaN too
    if ok.all():
        return

    def where(i):
        i = tuple(int(k) for k in i)
        return f"{index} = {i[0]}" + (f", position {i[1:]}" if len(i) > 1 else "") if i else "it"
    nan = actual.isnan() & ~expected.isnan()
    if nan.any():
        raise AssertionError(f"{what}: NaN at {where(nan.nonzero()[0])} (and {int(nan.sum())} "
                             f"entries in all), expected {expected[nan][0].item():.10g} there")
    excess = ((actual - expected).abs() - rtol * expected.abs()).nan_to_num(float("inf"))
    i = tuple(int(k) for k in torch.unravel_index(excess.argmax(), excess.shape))
    raise AssertionError(
        f"{what}: {actual[i].item():.10g} at {where(i)}, expected {expected[i].item():.10g}: the "
        f"largest difference, {(actual[i] - expected[i]).abs().item():.3g} ({int((~ok).sum())} of "
        f"{ok.numel()} entries off; allowed {atol:.1g} + {rtol:.1g} x |expected|)")


def first_false(ok):
    """The first index where the boolean tensor `ok` is False, as an int (1-D) or a tuple."""
    i = tuple(int(k) for k in (~ok).nonzero()[0])
    return i[0] if len(i) == 1 else i


# --- schedules that do not run exercise 3 ---------------------------------------------------------

def stand_in(T, L=10.0, power=1):
    """A schedule built from explicit betas, without exercise 3's make_betas, so that a mistake
    there costs no points in exercises 4-7. alpha_bar falls from about 1 to e^-L (4.5e-5 for
    L = 10, near the linear schedule's 4e-5), spread over t as t^power: 0 spreads it evenly, 1 rises
    like `linear`, 3 holds back to the end like `cosine`. Betas are clamped into [1e-5, 0.999], as
    the real schedules cap theirs."""
    w = torch.arange(1, T + 1, dtype=torch.float64) ** power
    return Schedule.from_betas((1 - torch.exp(-L * w / w.sum())).clamp(1e-5, 0.999),
                               f"stand-in^{power}")


@st.composite
def stand_ins(draw, max_T=2000):
    """Stand-in schedules of any length up to max_T, any end point e^-L (L from 1 to 20) and any
    shape."""
    return stand_in(draw(st.integers(1, max_T)), draw(st.floats(1, 20)),
                    draw(st.sampled_from([0, 1, 3])))


SHAPES = [0, 1, 3]  # the stand-ins' powers, for the tests that run one of each


# --- the schedules and their tables (exercise 3) --------------------------------------------------

@pytest.mark.ex3
@FAST
@given(name=schedules, T=st.integers(1, 2000))
def test_tables_are_valid_for_any_T(name, T):
    sched = Schedule(name, T)
    where = f"Schedule({name!r}, T={T})"
    assert sched.T == T and sched.name == name, f"{where} has T = {sched.T}, name {sched.name!r}"
    assert sched.betas.dtype == torch.float64, (
        f"make_betas({name!r}, {T}) returned {sched.betas.dtype}; expected float64")
    for table in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                  "sqrt_one_minus_alphas_cumprod", "snr"):
        value = getattr(sched, table)
        assert value.shape == (T,) and value.dtype == torch.float64, (
            f"{where}.{table}: shape {tuple(value.shape)}, {value.dtype}; expected ({T},) float64")
        assert torch.isfinite(value).all(), (
            f"{where}.{table} is not finite at t = {first_false(torch.isfinite(value))}")
    alpha_bar = sched.alphas_cumprod
    inside = (alpha_bar > 0) & (alpha_bar < 1)
    assert inside.all(), (f"{where}: alpha_bar_t = {alpha_bar[first_false(inside)]:.6g} at "
                          f"t = {first_false(inside)}; expected it inside (0, 1)")
    falls = alpha_bar[1:] < alpha_bar[:-1]
    assert falls.all(), (f"{where}: alpha_bar must fall at every step, but alpha_bar at "
                         f"t = {first_false(falls) + 1} is "
                         f"{alpha_bar[first_false(falls) + 1]:.6g}, not below "
                         f"{alpha_bar[first_false(falls)]:.6g}")
    close(sched.alphas_cumprod, torch.cumprod(1 - sched.betas, 0), f"{where}: alpha_bar_t against "
          "the product of (1 - beta_s) for s <= t", rtol=1e-14, atol=0, index="t")
    close(sched.snr, alpha_bar / (1 - alpha_bar),
          f"{where}: SNR_t against alpha_bar_t / (1 - alpha_bar_t)", rtol=1e-14, atol=0, index="t")


# Reference numbers: Ho et al. 2020's ends at T = 1000, and the same scaled by 1000 / T (the
# docstring).
LINEAR_ENDS = {1000: (1e-4, 0.02), 500: (2e-4, 0.04), 50: (2e-3, 0.4)}


@pytest.mark.ex3
@pytest.mark.parametrize("T", sorted(LINEAR_ENDS))
def test_linear_schedule_ends(T):
    b, (first, last) = make_betas("linear", T), LINEAR_ENDS[T]
    assert b.shape == (T,), (
        f"make_betas('linear', {T}) has shape {tuple(b.shape)}; expected ({T},)")
    assert b[0].item() == pytest.approx(first) and b[-1].item() == pytest.approx(last), (
        f"linear, T = {T}: betas run from {b[0].item():.6g} to {b[-1].item():.6g}; expected "
        f"{first:g} to {last:g} (1e-4 to 0.02, times 1000 / T)")
    steps = b.diff()
    assert torch.allclose(steps, steps.mean(), rtol=1e-9, atol=0), (
        f"linear, T = {T}: betas must be evenly spaced; the steps range from {steps.min():.6g} to "
        f"{steps.max():.6g}")


@pytest.mark.ex3
@pytest.mark.parametrize("T", sorted(LINEAR_ENDS))
def test_quadratic_schedule_ends(T):
    """Its ends are the linear schedule's for the same T (scaled by 1000 / T too); sqrt(beta) is
    evenly spaced."""
    b, (first, last) = make_betas("quadratic", T), LINEAR_ENDS[T]
    assert b.shape == (T,), (
        f"make_betas('quadratic', {T}) has shape {tuple(b.shape)}; expected ({T},)")
    assert b[0].item() == pytest.approx(first) and b[-1].item() == pytest.approx(last), (
        f"quadratic, T = {T}: betas run from {b[0].item():.6g} to {b[-1].item():.6g}; expected "
        f"{first:g} to {last:g}, the ends of the linear schedule for T = {T}")
    steps = b.sqrt().diff()
    assert torch.allclose(steps, steps.mean(), rtol=1e-9, atol=0), (
        f"quadratic, T = {T}: sqrt(beta) must be evenly spaced; its steps range from "
        f"{steps.min():.6g} to {steps.max():.6g}")


@pytest.mark.ex3
@pytest.mark.parametrize("T", sorted(REFERENCE["cosine_alpha_bar"], key=int))
def test_cosine_schedule_matches_stored_alpha_bar(T):
    """alpha_bar_t = f(t) / f(0) of Nichol & Dhariwal's Eq. 17, stored at a few t; the 0.999 cap
    bites only at the last step."""
    sched, stored = Schedule("cosine", int(T)), REFERENCE["cosine_alpha_bar"][T]
    t = torch.tensor([int(k) for k in stored])
    close(sched.alphas_cumprod[t], [stored[k] for k in stored],
          f"cosine, T = {T}: alpha_bar_t (Nichol & Dhariwal, Eq. 17, beta capped at 0.999) at "
          f"t = {t.tolist()}", rtol=1e-10, atol=0, index="entry")
    capped = (sched.betas == 0.999).nonzero().flatten().tolist()
    assert capped == [int(T) - 1], (f"cosine, T = {T}: beta is capped at 0.999 at t = {capped}; "
                                    f"expected only at the last step, t = {int(T) - 1}")


def test_from_betas_matches_named_schedule():
    named = Schedule("cosine", 37)
    custom = Schedule.from_betas(named.betas.tolist())
    assert custom.T == 37 and custom.name == "custom"
    for table in ("alphas_cumprod", "alphas_cumprod_prev", "snr"):
        close(getattr(custom, table), getattr(named, table), table, rtol=0, atol=0)


# --- the forward process (exercise 4) and the posterior (exercise 5) ------------------------------

@pytest.mark.ex4
@settings(max_examples=15, deadline=None)
@given(sched=stand_ins(max_T=1000), data=st.data(), seed=st.integers(0, 2 ** 31))
def test_q_sample_statistics(sched, data, seed):
    """Over many noise draws, x_t = q_sample(x_0, t, eps) has mean sqrt(alpha_bar_t) x_0 and
    variance 1 - alpha_bar_t (Eq. 4). Each row of the batch is one (t, x_0) pair with N draws."""
    pairs = data.draw(st.lists(st.tuples(st.integers(0, sched.T - 1), st.floats(-1, 1)),
                               min_size=1, max_size=4))
    N = 20_000
    t = torch.tensor([p[0] for p in pairs])
    x0 = torch.tensor([p[1] for p in pairs], dtype=torch.float64)[:, None].expand(-1, N)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    x_t = sched.q_sample(x0, t, noise)
    assert x_t.shape == x0.shape, (
        f"q_sample returned shape {tuple(x_t.shape)} for x_0 of shape {tuple(x0.shape)}")
    mean, var = sched.alphas_cumprod[t].sqrt() * x0[:, 0], 1 - sched.alphas_cumprod[t]
    for i, (got_mean, got_var) in enumerate(zip(x_t.mean(1).tolist(), x_t.var(1).tolist())):
        where = f"t = {int(t[i])}, x_0 = {x0[i, 0]:.3g}"
        allowed = Z * math.sqrt(var[i] / N)
        assert abs(got_mean - mean[i]) <= allowed, (
            f"q_sample: mean {got_mean:.4g} at {where}; expected sqrt(alpha_bar_t) x_0 = "
            f"{mean[i]:.4g} (+- {allowed:.2g} over {N} draws)")
        allowed = Z * var[i] * math.sqrt(2 / (N - 1))
        assert abs(got_var - var[i]) <= allowed, (
            f"q_sample: variance {got_var:.4g} at {where}; expected 1 - alpha_bar_t = {var[i]:.4g} "
            f"(+- {allowed:.2g} over {N} draws)")


@pytest.mark.ex4
@FAST
@given(sched=stand_ins(), seed=st.integers(0, 2 ** 31))
def test_predict_x0_inverts_q_sample(sched, seed):
    """Eq. 15 (predict_x0_from_eps, given) undoes Eq. 9 when it gets the same eps."""
    g, T = torch.Generator().manual_seed(seed), sched.T
    x0 = torch.rand(16, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (16,), generator=g)
    t[0] = T - 1  # the noisiest step divides by the smallest sqrt(alpha_bar)
    x_t = sched.q_sample(x0, t, eps=eps)
    # float64 rounding in x_t - sqrt(1 - alpha_bar) eps, amplified by the division by
    # sqrt(alpha_bar_t)
    bound = (8 * torch.finfo(torch.float64).eps * (1 + x_t.abs() + eps.abs())
             / sched.sqrt_alphas_cumprod[t, None])
    back = sched.predict_x0_from_eps(x_t, t, eps)
    if not ((back - x0).abs() <= bound).all():
        i, j = first_false((back - x0).abs() <= bound)
        raise AssertionError(
            f"q_sample then Eq. 15 (predict_x0_from_eps) should give x_0 back: got "
            f"{back[i, j]:.6g} at t = {int(t[i])}, expected x_0 = {x0[i, j]:.6g}; is "
            "x_t = q_sample(x_0, t, eps) Eq. 9, with this eps?")


@pytest.mark.ex5
@FAST
@given(sched=stand_ins())
def test_posterior_is_bayes_rule(sched):
    """q(x_{t-1}, x_t | x_0) is one Gaussian, reachable two ways: forwards, q(x_{t-1} | x_0) then
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise; or backwards, q(x_t | x_0) then the posterior
    N(c1 x_0 + c2 x_t, beta_tilde). The posterior is right iff both give the same mean, variance
    and covariance; with a = alpha_bar_t, p = alpha_bar_{t-1}, these are the three identities
    below. The posterior mean is linear in (x_0, x_t), so q_posterior at unit inputs reads off c1
    and c2."""
    T, t = sched.T, torch.arange(sched.T)
    one, zero = torch.ones(T, 1, dtype=torch.float64), torch.zeros(T, 1, dtype=torch.float64)
    c1, var, log_var = (v.flatten() for v in sched.q_posterior(one, zero, t))
    c2 = sched.q_posterior(zero, one, t)[0].flatten()
    a, p = sched.alphas_cumprod, sched.alphas_cumprod_prev
    # float64 rounding, amplified up to 1 / beta_1 times where 1 - alpha_bar_1 = 1 - (1 - beta_1)
    # cancels
    tol = dict(rtol=0, atol=16 * torch.finfo(torch.float64).eps / sched.betas.min().item(),
               index="t")
    close(c1 + c2 * a.sqrt(), p.sqrt(), "q_posterior: E[x_(t-1) | x_0] = c1 + c2 sqrt(alpha_bar_t) "
          "should be sqrt(alpha_bar_(t-1)), where c1, c2 are the mean's coefficients of x_0 and "
          "x_t", **tol)
    close(c2 ** 2 * (1 - a) + var, 1 - p, "q_posterior: Var[x_(t-1) | x_0] = "
          "c2^2 (1 - alpha_bar_t) + variance should be 1 - alpha_bar_(t-1)", **tol)
    close(c2 * (1 - a), sched.alphas.sqrt() * (1 - p), "q_posterior: Cov[x_(t-1), x_t | x_0] = "
          "c2 (1 - alpha_bar_t) should be sqrt(alpha_t) (1 - alpha_bar_(t-1))", **tol)
    bounded = (var >= 0) & (var <= sched.betas)
    assert bounded.all(), (f"q_posterior: variance {var[first_false(bounded)]:.6g} at "
                           f"t = {first_false(bounded)}; expected beta_tilde_t, within [0, beta_t]")
    assert var[0] == 0, f"q_posterior: variance {var[0].item():.3g} at t = 0; expected 0"
    if T > 1:
        close(log_var[1:], var[1:].log(), "q_posterior: log_variance against log(variance)",
              rtol=1e-12, atol=0, index="t - 1")
    close(log_var[:1], (var[1:2] if T > 1 else sched.betas[:1]).log(), "q_posterior: log_variance "
          "at t = 0, where log beta_tilde = -inf; expected the log of the variance at t = 1 (of "
          "beta_1 when T = 1)", rtol=1e-12, atol=0)


# --- the reverse process, step by step (exercises 6 and 7) ----------------------------------------

def toy_model(x, t):
    """Any deterministic eps predictor will do; this one makes x0_hat leave [-1, 1] so clipping
    acts."""
    return torch.sin(3 * x) + 0.001 * t.view(-1, *[1] * (x.dim() - 1))


STORED_POSTERIOR = {name: torch.tensor(values, dtype=torch.float64)
                    for name, values in REFERENCE["stand_in_posterior"].items()}
STUB = "exercise 5's q_posterior replaced by its stored answer"  # for the messages


def with_stored_posterior(sched):
    """stand_in(30) with its q_posterior replaced by the right answer for this schedule, read from
    tests/reference_values.json (Eq. 7's weights of x_0 and x_t, beta_tilde_t and its log), so that
    exercise 6 is graded on its own: your q_posterior is not run here, and the messages say so.
    A p_sample that takes its mean by Eq. 11 directly gets the same numbers."""
    assert sched.T == len(STORED_POSTERIOR["variance"]), "stored for stand_in(30) only"
    table = lambda name, t, x: sched._at(STORED_POSTERIOR[name], t, x)  # noqa: E731

    def q_posterior(x0, x_t, t):
        return (table("x0_weight", t, x_t) * x0 + table("x_t_weight", t, x_t) * x_t,
                table("variance", t, x_t), table("log_variance", t, x_t))
    sched.q_posterior = q_posterior
    return sched


def check_noisy_step(x_prev, mean, sigma, seed, what):
    """x_prev = mean + sigma z, where z ~ N(0, I) comes from torch.Generator().manual_seed(seed):
    drawn in x's dtype, or drawn in float32 and cast (then z carries float32's rounding, and so may
    sigma z). mean, sigma: the stored deterministic part and noise scale of the step."""
    mean, sigma = (torch.as_tensor(v, dtype=x_prev.dtype) for v in (mean, sigma))
    for dtype in (torch.float64, torch.float32):
        z = torch.randn(x_prev.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        noise = sigma * z.to(x_prev.dtype)
        slack = 8 * torch.finfo(dtype).eps * noise.abs() if dtype != x_prev.dtype else 0
        if ((x_prev - mean - noise).abs() <= 1e-9 + 1e-9 * mean.abs() + slack).all():
            return
    z = torch.randn(x_prev.shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    close(x_prev, mean + sigma * z, f"{what} (against the step with z drawn from `generator` in "
          "x's dtype; z drawn in float32 and cast fits no better)", rtol=1e-9, atol=1e-9,
          index="row")


def step_inputs(T=30, seed=0, ddim=False):
    """The inputs of the stored step cases: 16 x_t of two numbers, at t from 0 to T - 1 (both ends
    included); for DDIM also t_prev from -1 (x_0 itself) to t - 1."""
    g = torch.Generator().manual_seed(seed)
    x_t = 2 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.randint(1 if ddim else 0, T, (16,), generator=g)
    t[0], t[1] = T - 1, 1 if ddim else 0
    if not ddim:
        return x_t, t
    # uniform in -1..t-1
    t_prev = (torch.rand(16, generator=g, dtype=torch.float64) * (t + 1)).long() - 1
    t_prev[0], t_prev[1] = T - 2, -1
    return x_t, t, t_prev


@pytest.mark.ex6
@pytest.mark.parametrize("case", REFERENCE["ddpm_step"],
                         ids=lambda c: f"{c['variance']}-clip{c['clip_x0']}")
def test_ddpm_step_matches_stored_values(case):
    """One p_sample step (Algorithm 2) against the reference's own mean and x0_hat for the same
    inputs, plus sigma_t z with z from the generator (z = 0 at t = 0)."""
    sched = with_stored_posterior(stand_in(30))
    x_t, t = step_inputs()
    x_prev, x0_hat = sched.p_sample(toy_model, x_t, t, generator=torch.Generator().manual_seed(7),
                                    clip_x0=case["clip_x0"], variance=case["variance"])
    what = f"p_sample (variance={case['variance']!r}, clip_x0={case['clip_x0']}; {STUB})"
    close(x0_hat, case["x0_hat"],
          f"{what}: its x0_hat (Eq. 15{', clamped to [-1, 1]' if case['clip_x0'] else ''})",
          rtol=1e-9, atol=1e-9, index="row")
    var = sched.betas if case["variance"] == "beta" else STORED_POSTERIOR["variance"]
    sigma = (var[t].sqrt() * (t > 0))[:, None]
    check_noisy_step(x_prev, case["mean"], sigma, 7, f"{what}: x_(t-1) = mean + sigma_t z, "
                     f"z = 0 at t = 0 (rows 0 and 1 are t = {int(t[0])} and t = 0)")


@pytest.mark.ex6
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_last_ddpm_step_adds_no_noise(variance):
    sched = with_stored_posterior(stand_in(30))
    x_t, t = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.zeros(8, dtype=torch.long)
    out = [sched.p_sample(toy_model, x_t, t, generator=torch.Generator().manual_seed(k),
                          clip_x0=False, variance=variance) for k in (1, 2)]
    close(out[0][0], out[1][0], f"p_sample at t = 0 (paper step 1; {STUB}) with two different "
          "noise seeds: Algorithm 2 adds no noise at the last step (z = 0)", rtol=0, atol=0,
          index="sample")
    close(out[0][0], out[0][1], f"p_sample at t = 0 ({STUB}), against its x0_hat: with "
          "alpha_bar_0 = 1 the posterior mean (Eq. 7), and Eq. 11, are x0_hat itself",
          rtol=1e-10, atol=1e-10, index="sample")


@pytest.mark.ex7
@pytest.mark.parametrize("case", REFERENCE["ddim_step"],
                         ids=lambda c: f"eta{c['eta']}-clip{c['clip_x0']}")
def test_ddim_step_matches_stored_values(case):
    """One ddim_step (Song et al. 2021, Eqs. 12 and 16) against the reference's output for the same
    inputs and noise: its deterministic part and sigma are stored, so at eta = 0.5 this checks
    sigma^2 exactly, which the sampling statistics below only roughly can."""
    sched = stand_in(30)
    x_t, t, t_prev = step_inputs(ddim=True)
    x_prev, x0_hat = sched.ddim_step(toy_model, x_t, t, t_prev, eta=case["eta"],
                                     generator=torch.Generator().manual_seed(7),
                                     clip_x0=case["clip_x0"])
    what = f"ddim_step (eta = {case['eta']}, clip_x0={case['clip_x0']})"
    close(x0_hat, case["x0_hat"],
          f"{what}: its x0_hat (Eq. 15{', clamped to [-1, 1]' if case['clip_x0'] else ''})",
          rtol=1e-9, atol=1e-9, index="row")
    sigma = torch.tensor(case["sigma"], dtype=torch.float64)[:, None]
    check_noisy_step(x_prev, case["mean"], sigma, 7,
                     f"{what}: x_prev of Eq. 12 with Eq. 16's sigma (rows 0 and 1 go from "
                     f"t = {int(t[0])} to {int(t_prev[0])} and from t = 1 to x_0)")


@pytest.mark.ex7
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_over_consecutive_steps_is_ddpm_beta_tilde(clip_x0):
    """With eta = 1 and t_prev = t - 1, Eq. 16 gives sigma^2 = beta_tilde and Eq. 12 reduces to the
    posterior mean, so a DDIM step must be DDPM's step with variance beta_tilde (its mean and
    beta_tilde stored from the reference's p_sample), from the same seed; with clipping too,
    because DDIM rederives eps from the clipped x0_hat."""
    sched = stand_in(30)
    x_t, t = step_inputs()
    x_prev, _ = sched.ddim_step(toy_model, x_t, t, t - 1, eta=1.0,
                                generator=torch.Generator().manual_seed(7), clip_x0=clip_x0)
    [ddpm] = [case for case in REFERENCE["ddpm_step"]
              if case["variance"] == "beta_tilde" and case["clip_x0"] == clip_x0]
    check_noisy_step(x_prev, ddpm["mean"], STORED_POSTERIOR["variance"][t].sqrt()[:, None], 7,
                     f"ddim_step at eta = 1 from t to t - 1 (clip_x0={clip_x0}), against DDPM's "
                     f"step with variance beta_tilde (rows 0 and 1 are t = {int(t[0])} and t = 0)")


@pytest.mark.ex7
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_last_step_returns_x0_hat(eta):
    sched = stand_in(100)
    timesteps = sched.ddim_timesteps(7)
    x, traj = sched.ddim_sample_loop(toy_model, (4, 5), steps=7, eta=eta,
                                     generator=torch.Generator().manual_seed(0), record=timesteps)
    assert [r[0] for r in traj] == timesteps, (
        f"ddim_sample_loop recorded timesteps {[r[0] for r in traj]}; expected {timesteps}")
    close(x, traj[-1][2], f"DDIM (eta = {eta}): the last step goes to alpha_bar = 1, so it should "
          "return its x0_hat exactly, with no noise left", rtol=0, atol=0, index="sample")


@FAST
@given(T=st.integers(1, 2000), data=st.data())
def test_ddim_timesteps(T, data):
    steps = data.draw(st.integers(1, T))
    ts = Schedule.from_betas(torch.full((T,), 0.01)).ddim_timesteps(steps)
    assert len(ts) == steps and ts[0] == T - 1 and ts[-1] >= 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    if steps == T:
        assert ts == list(range(T - 1, -1, -1))


# --- the samplers end to end: Gaussian data, whose optimal noise predictor is known --------------

MU, SD, N = 0.3, 0.5, 20_000  # data N(MU, SD^2); N independent scalar samples per run


def eps_star(sched):
    """E[eps | x_t] for data N(MU, SD^2): sqrt(1 - a) (x_t - sqrt(a) MU) / (a SD^2 + 1 - a),
    a = alpha_bar_t."""
    def model(x, t):
        a = sched.alphas_cumprod[t].view(-1, 1).to(x)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD ** 2 + 1 - a)
    return model


def check_samples(x, m, sd, what):
    """The empirical mean and std of x (all entries i.i.d.) match the exact m, sd up to sampling
    error."""
    n = x.numel()
    mean, std = x.mean().item(), x.std().item()
    assert abs(mean - m) <= Z * sd / math.sqrt(n), (
        f"{what}: sample mean {mean:.5f}, expected {m:.5f} (+- {Z * sd / math.sqrt(n):.5f} over "
        f"{n} samples)")
    assert abs(std - sd) <= Z * sd / math.sqrt(2 * (n - 1)), (
        f"{what}: sample std {std:.5f}, expected {sd:.5f} "
        f"(+- {Z * sd / math.sqrt(2 * (n - 1)):.5f} over {n} samples)")


# The exact mean and std of each sampler's output, stored: with eps* affine in x, every step is an
# affine map plus Gaussian noise, so the output is Gaussian with moments the reference computed from
# the papers' formulas. DDIM: each stand-in shape; DDPM: both variance choices, and the back-loaded
# shape (with the flat one, T = 1000 steps of DDPM end 1% off the data's std: the discrete chain's
# own error, not the code's).
@pytest.mark.ex6(depends=[5])
@pytest.mark.parametrize("power,variance", [(1, "beta"), (1, "beta_tilde"), (3, "beta")])
def test_ddpm_samples_gaussian_data(power, variance):
    """Algorithm 2 with the exact eps* turns N(0, I) into the data's N(0.3, 0.5^2), to within 1% for
    T = 1000, and the code must give exactly that discrete chain's mean and std. It runs your
    q_posterior (exercise 5)."""
    sched = stand_in(1000, power=power)
    m, sd = REFERENCE["ddpm_moments"][f"{power}-{variance}"]
    # N scalars as a (10, N/10) batch: fewer coefficient gathers
    x, _ = sched.p_sample_loop(eps_star(sched), (10, N // 10),
                               generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                               clip_x0=False, variance=variance)
    check_samples(x, m, sd, f"DDPM (variance={variance!r}, stand-in schedule t^{power}, T = 1000) "
                  f"on N({MU}, {SD}^2) data with the exact eps*")


@pytest.mark.ex7
@pytest.mark.parametrize("power", SHAPES)
@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_samples_gaussian_data(power, steps, eta):
    """The mean comes out right; the std comes out smaller than SD (few DDIM steps
    under-disperse), and the code must reproduce that exact discrete behaviour, not the ideal
    one."""
    sched = stand_in(1000, power=power)
    m, sd = REFERENCE["ddim_moments"][f"{power}-{steps}-{eta}"]
    x, _ = sched.ddim_sample_loop(eps_star(sched), (10, N // 10), steps=steps, eta=eta,
                                  generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                                  clip_x0=False)
    check_samples(x, m, sd, f"DDIM ({steps} steps, eta = {eta}, stand-in schedule t^{power}) on "
                  f"N({MU}, {SD}^2) data with the exact eps*")


# --- shapes, dtypes, devices, seeds, trajectories -------------------------------------------------

def call(method, sched, dtype, device):
    """Run `method` of sched on a small batch of `dtype` on `device`: {name of each output: the
    output}."""
    x0 = torch.rand(3, 1, 5, 4, dtype=dtype, device=device) * 2 - 1
    eps, t = torch.randn_like(x0), torch.tensor([0, 7, 29], device=device)
    g = torch.Generator(device).manual_seed(0)
    if method == "q_sample":
        return x0, dict(x_t=sched.q_sample(x0, t, eps=eps))
    if method == "q_posterior":
        return x0, dict(zip(["mean", "variance", "log_variance"], sched.q_posterior(x0, eps, t)))
    if method == "p_sample":
        stepped = with_stored_posterior(sched).p_sample(toy_model, eps, t, generator=g)
        return x0, dict(zip(["x_(t-1)", "x0_hat"], stepped))
    return x0, dict(zip(["x_prev", "x0_hat"],
                        sched.ddim_step(toy_model, eps, t, t - 1, eta=0.5, generator=g)))


@pytest.mark.parametrize("method", [pytest.param("q_sample", marks=pytest.mark.ex4),
                                    pytest.param("q_posterior", marks=pytest.mark.ex5),
                                    pytest.param("p_sample", marks=pytest.mark.ex6),
                                    pytest.param("ddim_step", marks=pytest.mark.ex7)])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_dtype_and_device(method, device, dtype):
    """The tables are float64 on the CPU; what comes out must still have x's dtype and device, or
    Part 2's float32 model (and any GPU run) breaks. self._at(table, t, x) casts the gathered values
    for you."""
    x0, outputs = call(method, stand_in(30), dtype, device)
    for name, out in outputs.items():
        shape = (3, 1, 1, 1) if name in ("variance", "log_variance") else x0.shape
        stub = f" ({STUB})" if method == "p_sample" else ""
        assert out.dtype == dtype and out.device == x0.device, (
            f"{method}{stub} returned its {name} as {out.dtype} on {out.device} for {dtype} input "
            f"on {x0.device}; expected {dtype} on {x0.device}")
        assert out.shape == shape, (
            f"{method}{stub} returned its {name} with shape {tuple(out.shape)}; expected {shape}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_pass_through(device, dtype):
    sched = Schedule("cosine", 30)
    x0 = torch.rand(3, 1, 5, 4, dtype=dtype, device=device) * 2 - 1
    eps, t = torch.randn_like(x0), torch.tensor([0, 7, 29], device=device)
    x_t = sched.q_sample(x0, t, eps=eps)
    mean, var, log_var = sched.q_posterior(x0, x_t, t)
    outputs = [x_t, mean, sched.predict_x0_from_eps(x_t, t, eps),
               *sched.p_sample(toy_model, x_t, t)]
    assert all(o.shape == x0.shape and o.dtype == dtype and o.device == x0.device for o in outputs)
    assert all(o.shape == (3, 1, 1, 1) and o.dtype == dtype and o.device == x0.device
               for o in (var, log_var))
    g = torch.Generator(device).manual_seed(0)
    assert sched.ddim_timesteps(5) == [29, 23, 17, 11, 5]
    shape = (2, 1, 5, 4)
    for x, traj in (sched.p_sample_loop(toy_model, shape, generator=g, device=device, dtype=dtype,
                                        record=[5, 29]),
                    sched.ddim_sample_loop(toy_model, shape, steps=5, generator=g, device=device,
                                           dtype=dtype, record=[0, 5, 6, 29])):
        assert x.shape == shape and x.dtype == dtype and x.device == x0.device
        # in sampling order; DDIM keeps only the timesteps it visits
        assert [r[0] for r in traj] == [29, 5]
        assert all(r[1].device.type == r[2].device.type == "cpu" and r[1].shape == x.shape
                   for r in traj)


@pytest.mark.ex6
def test_model_sees_long_timesteps_in_sampling_order():
    seen = []
    sched = with_stored_posterior(stand_in(30))
    sched.p_sample_loop(lambda x, t: seen.append(t) or torch.zeros_like(x), (3, 2))
    got = [tt.tolist() for tt in seen]
    assert got == [[t] * 3 for t in range(29, -1, -1)], (
        f"p_sample_loop over T = 30 steps called the model with t = {got}; expected [29, 29, 29], "
        "[28, 28, 28], ..., [0, 0, 0]: p_sample should call model(x_t, t) once, with the t it was "
        f"given ({STUB})")
    assert all(tt.dtype == torch.long for tt in seen), (
        f"p_sample should pass the model t as given (long) ({STUB})")


@pytest.mark.ex6
def test_clipping_keeps_x0_hat_in_data_range():
    sched = with_stored_posterior(stand_in(30))
    for clip_x0 in (True, False):
        _, traj = sched.p_sample_loop(toy_model, (8, 3), generator=torch.Generator().manual_seed(0),
                                      clip_x0=clip_x0, record=range(30))
        largest = max(r[2].abs().max().item() for r in traj)
        if clip_x0:
            assert largest <= 1, (f"p_sample with clip_x0=True ({STUB}) returned an x0_hat of "
                                  f"{largest:.3g}; expected every value clamped to [-1, 1]")
        else:
            assert largest > 1, (f"p_sample with clip_x0=False ({STUB}) returned x0_hat within "
                                 f"[-1, 1] only; this toy model's Eq. 15 prediction reaches "
                                 f"{largest:.3g}: clamp only when clip_x0")


@pytest.mark.ex6
def test_trajectory_holds_x_t_and_its_x0_hat():
    sched = with_stored_posterior(stand_in(30))
    x, traj = sched.p_sample_loop(toy_model, (4, 3), generator=torch.Generator().manual_seed(3),
                                  dtype=torch.float64, clip_x0=False, record=range(30))
    recorded = [r[0] for r in traj]
    assert recorded == list(range(29, -1, -1)), (
        f"p_sample_loop with record=range(30) recorded t = {recorded}; expected 29 down to 0")
    assert traj[-1][2].shape == x.shape, (
        f"p_sample returned x0_hat of shape {tuple(traj[-1][2].shape)}; expected x_t's, "
        f"{tuple(x.shape)}")
    for t, x_t, x0_hat in traj:
        tt = torch.full((4,), t)
        close(x0_hat, sched.predict_x0_from_eps(x_t, tt, toy_model(x_t, tt)),
              f"p_sample's x0_hat at t = {t} ({STUB}), against Eq. 15 (predict_x0_from_eps) of the "
              "model's eps", index="sample")
    assert sched.p_sample_loop(toy_model, (4, 3))[1] == [], (
        "p_sample_loop without `record` returned a trajectory; expected [] (this loop is given)")


@pytest.mark.parametrize("sampler", [pytest.param("ddpm", marks=pytest.mark.ex6),
                                     pytest.param("ddim", marks=pytest.mark.ex7)])
def test_same_seed_same_samples(sampler):
    sched = with_stored_posterior(stand_in(30))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return sched.p_sample_loop(toy_model, (6, 2), generator=g)[0]
        return sched.ddim_sample_loop(toy_model, (6, 2), steps=8, eta=0.5, generator=g)[0]
    what = f"{sampler} ({STUB})" if sampler == "ddpm" else sampler
    close(run(11), run(11), f"{what}: two runs from seed 11 (all noise must come from "
          "`generator`)", rtol=0, atol=0, index="sample")
    assert not torch.equal(run(11), run(12)), (
        f"{what}: seeds 11 and 12 gave the same samples; draw z from `generator`")


# --- classifier-free guidance (exercise 12) ------------------------------------------------------

def eps_pair(seed, shape=(4, 3, 5, 5)):
    """Two made-up noise predictions, with and without the condition (float64)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


@pytest.mark.ex12
def test_guidance_at_scale_1_is_the_conditional_model_and_at_0_the_unconditional():
    cond, uncond = eps_pair(0)
    close(guided_eps(cond, uncond, 1.0), cond, "guided_eps at scale 1 (expected eps_cond, the "
          "plain conditional model)", rtol=1e-12, atol=1e-12)
    close(guided_eps(cond, uncond, 0.0), uncond, "guided_eps at scale 0 (expected eps_uncond, the "
          "unconditional model)", rtol=1e-12, atol=1e-12)
    dtype = guided_eps(cond.float(), uncond.float(), 2.5).dtype
    assert dtype == torch.float32, (
        f"guided_eps of two float32 predictions returned {dtype}; expected float32: combine them "
        "without creating float64 tensors")


@pytest.mark.ex12
@FAST
@given(a=st.floats(-2, 10), b=st.floats(-2, 10), mix=st.floats(0, 1), seed=st.integers(0, 2 ** 31))
def test_guidance_is_linear_in_the_scale(a, b, mix, seed):
    """As the scale grows, the guided eps moves along the straight line through the unconditional
    (scale 0) and the conditional (scale 1) predictions at a constant pace: at a weighted mean of
    two scales it is the same weighted mean of their guided eps."""
    cond, uncond = eps_pair(seed)
    at = lambda scale: guided_eps(cond, uncond, scale)
    close(at(mix * a + (1 - mix) * b), mix * at(a) + (1 - mix) * at(b),
          f"guided_eps at scale {mix * a + (1 - mix) * b:.4g}, against the mix of scales "
          f"{a:.4g} and {b:.4g}: guidance must be linear in the scale", rtol=1e-9, atol=1e-9)


@pytest.mark.ex12
def test_classifier_free_guidance():
    calls = []

    def model(x, t, y):  # a class-conditional "eps": depends on the label, the time and x
        calls.append(len(y))
        return x * (y.view(-1, 1) + 1) + t.view(-1, 1)

    x, t, y = torch.randn(4, 3), torch.tensor([5, 5, 2, 0]), torch.tensor([0, 3, 1, 9])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    calls.clear()
    guided = {scale: classifier_free_guidance(model, y, scale, null_label=10)(x, t)
              for scale in (0.0, 1.0, 3.5)}
    close(guided[0.0], uncond, "guided eps at scale 0", rtol=1e-6, atol=1e-5)  # float32
    close(guided[1.0], cond, "guided eps at scale 1", rtol=1e-6, atol=1e-5)
    # at scale 3.5, 3.5 times as far from the unconditional eps as the conditional eps is
    close(guided[3.5] - uncond, 3.5 * (cond - uncond), "guided eps at scale 3.5, minus the "
          "unconditional eps", rtol=1e-6, atol=1e-5)
    assert calls == [8, 8, 8], (  # both halves in one batched call
        f"classifier_free_guidance called the model with batches of {calls} for B = 4; expected "
        "one batch of 2B = 8 per call (this function is given: did guided_eps call the model?)")
    close(classifier_free_guidance(model, y, 1.0, 10)(x, t), cond, "guided eps at scale 1",
          rtol=1e-6, atol=1e-5)


@pytest.mark.ex12
def test_classifier_free_guidance_with_a_prompt():
    """Part 3: the condition is a prompt's tokens (B, L), and "no condition" the empty prompt's."""
    calls = []

    def model(x, t, ids):  # a text-conditioned "eps": depends on the words, the time and x
        calls.append(len(ids))
        return x * (1 + ids.float().mean(1, keepdim=True)) + t.view(-1, 1)

    x, t = torch.randn(3, 4), torch.tensor([999, 500, 0])
    ids = torch.tensor([[1, 2, 4, 15, 0], [1, 11, 0, 0, 0], [1, 20, 8, 0, 0]])  # made-up tokens
    empty = torch.tensor([[1, 0, 0, 0, 0]]).expand_as(ids)
    prompted, unprompted = model(x, t, ids), model(x, t, empty)
    calls.clear()
    for scale, expected, what in [(1.0, prompted, "the prompted model"),
                                  (0.0, unprompted, "the empty prompt's")]:
        close(classifier_free_guidance(model, ids, scale, null_label=empty)(x, t), expected,
              f"guided eps at scale {scale:g}: expected {what}", rtol=1e-6, atol=1e-5)
    guided = classifier_free_guidance(model, ids, -2.0, null_label=empty)(x, t)
    close(guided - unprompted, -2 * (prompted - unprompted), "guided eps at scale -2, minus the "
          "empty prompt's", rtol=1e-6, atol=1e-5)
    assert calls == [6, 6, 6], (  # both halves in one batched call
        f"classifier_free_guidance called the model with batches of {calls} for B = 3; expected "
        "one batch of 2B = 6 per call (this function is given: did guided_eps call the model?)")


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,fragments", [
    (lambda: make_betas("linear", 0), ["T = 0", ">= 1"]),
    (lambda: Schedule("cosine", -3), ["T = -3", ">= 1"]),
    (lambda: make_betas("linear", 2.5), ["T = 2.5", "integer >= 1"]),
    (lambda: make_betas("sigmoidal", 10), ["'sigmoidal'", "linear, cosine, quadratic"]),
    (lambda: Schedule.from_betas([0.1, 1.0]), ["betas[1] = 1.0", "(0, 1)"]),
    (lambda: Schedule.from_betas([0.0, 0.1]), ["betas[0] = 0.0", "(0, 1)"]),
    (lambda: Schedule.from_betas([0.1, float("nan")]), ["betas[1] = nan", "(0, 1)"]),
    (lambda: Schedule.from_betas([]), ["shape (0,)", "length T >= 1"]),
    (lambda: stand_in(10).ddim_timesteps(0), ["got 0", "from 1 to T = 10"]),
    (lambda: stand_in(10).ddim_sample_loop(toy_model, (1, 1), steps=11),
     ["got 11", "from 1 to T = 10"]),
    (lambda: stand_in(10).q_sample(torch.zeros(2, 1), torch.tensor([0, 10]), torch.zeros(2, 1)),
     ["t = 10", "from 0 to 9"]),
    (lambda: stand_in(10).p_sample(toy_model, torch.zeros(2, 1), torch.tensor([-1, 3])),
     ["t = -1", "from 0 to 9"]),
    (lambda: stand_in(10).ddim_step(toy_model, torch.zeros(2, 1), torch.tensor([4, 4]),
                                    torch.tensor([3, 4])),
     ["t_prev = 4 for t = 4", "[-1, t - 1]"]),
    (lambda: stand_in(10).p_sample_loop(toy_model, (1, 1), record=[3, 10]),
     ["timestep 10", "from 0 to 9"]),
    (lambda: stand_in(10).p_sample(toy_model, torch.zeros(1, 1), torch.tensor([3]),
                                   variance="large"),
     ["'large'", "'beta' or 'beta_tilde'"]),
    (lambda: stand_in(10).ddim_sample_loop(toy_model, (1, 1), steps=5, eta=1.5),
     ["eta = 1.5", "[0, 1]"]),
])
def test_bad_input_names_value_and_range(call, fragments):
    with pytest.raises(ValueError) as error:
        call()
    assert all(f in str(error.value) for f in fragments), (str(error.value), fragments)
