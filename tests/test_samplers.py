"""Tests of the samplers for fewer steps (issue 16): respaced DDPM (Nichol & Dhariwal 2021,
Section 4) and DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), beside DDPM and DDIM.

Each is checked against what it must equal. Respaced with every step kept, it is DDPM itself,
draw for draw; with variance beta_tilde on any subsequence, it is DDIM at eta = 1 (Song et al.
2021, Eq. 16, whose sigma^2 is then the respaced beta_tilde). DPM-Solver++'s first-order steps are
DDIM's at eta = 0. On Gaussian data N(MU, SD^2) both the noise predictor eps* and the solution of
the sampling ODE are known exactly, so the deterministic samplers are measured against the exact
answer: the error must shrink as the steps grow, and the second-order method must beat DDIM.

No test here is graded (no @pytest.mark.exN), but respaced sampling runs p_sample (exercises 5 and
6) and the comparisons run ddim_step (exercise 7).
"""
import math
from functools import partial

import pytest
import torch
from hypothesis import given, strategies as st

from test_schedule import (DEVICES, FAST, MU, SD, SHAPES, close, eps_star, stand_in, stand_ins,
                           toy_model)


def seed(k):
    return torch.Generator().manual_seed(k)


# --- respaced DDPM --------------------------------------------------------------------------------

@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("clip_x0", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_respaced_with_every_step_is_ddpm_draw_for_draw(variance, clip_x0, dtype):
    sched = stand_in(40)
    kw = dict(dtype=dtype, clip_x0=clip_x0, variance=variance, record=range(40))
    x_ddpm, traj_ddpm = sched.p_sample_loop(toy_model, (5, 3), generator=seed(4), **kw)
    x, traj = sched.respaced_sample_loop(toy_model, (5, 3), steps=40, generator=seed(4), **kw)
    assert torch.equal(x, x_ddpm), "respaced_sample_loop with steps = T should be p_sample_loop"
    assert [r[0] for r in traj] == [r[0] for r in traj_ddpm] == list(range(39, -1, -1))
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(traj, traj_ddpm))


@FAST
@given(sched=stand_ins(), data=st.data())
def test_respaced_tables_keep_alpha_bar_at_the_kept_steps(sched, data):
    """Nichol & Dhariwal 2021, Section 4: on the subsequence S, alpha_bar_{S_i} is the original one
    and beta_{S_i} = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}} (alpha_bar = 1 before S_0)."""
    steps = data.draw(st.integers(1, sched.T))
    respaced, kept = sched.respaced(steps)
    assert kept == sched.ddim_timesteps(steps)[::-1] and respaced.T == steps
    alpha_bar = sched.alphas_cumprod[kept]
    # float64 rounding: each beta is off by a few eps at most, and alpha_bar, a product of `steps`
    # factors 1 - beta each below 1, by a few eps per factor
    eps = torch.finfo(torch.float64).eps
    close(respaced.alphas_cumprod, alpha_bar, f"{sched}, respaced to {steps} steps: alpha_bar at "
          "the kept steps", rtol=0, atol=4 * steps * eps, index="respaced t")
    before = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    close(respaced.betas, 1 - alpha_bar / before, f"{sched}, respaced to {steps} steps: beta",
          rtol=0, atol=4 * eps, index="respaced t")


@FAST
@given(sched=stand_ins(max_T=200), data=st.data(), clip_x0=st.booleans())
def test_respaced_beta_tilde_is_ddim_eta_1(sched, data, clip_x0):
    """On the respaced schedule, beta_tilde is DDIM's sigma^2 at eta = 1 (Eq. 16) and the
    posterior mean is Eq. 12's mean: the two samplers take the same steps with the same noise."""
    steps = data.draw(st.integers(1, sched.T))
    kw = dict(steps=steps, dtype=torch.float64, clip_x0=clip_x0)
    x, _ = sched.respaced_sample_loop(toy_model, (4, 3), generator=seed(5), variance="beta_tilde",
                                      **kw)
    x_ddim, _ = sched.ddim_sample_loop(toy_model, (4, 3), eta=1.0, generator=seed(5), **kw)
    close(x, x_ddim, f"{sched}, {steps} steps, clip_x0={clip_x0}: respaced DDPM (beta_tilde) "
          "against DDIM (eta = 1) from the same seed", rtol=1e-8, atol=1e-8, index="sample")


def test_respaced_model_sees_the_original_timesteps():
    sched, seen = stand_in(100), []
    kept = sched.ddim_timesteps(7)  # 99, 84, 70, 56, 41, 27, 13

    def model(x, t):
        seen.append(t.tolist())
        return toy_model(x, t)
    x, traj = sched.respaced_sample_loop(model, (3, 2), steps=7, generator=seed(0),
                                         dtype=torch.float64, record=[56, 0, 99, 13])
    assert seen == [[t] * 3 for t in kept]
    assert [r[0] for r in traj] == [99, 56, 13]  # original timesteps, only the kept ones
    close(x, traj[-1][2], "respaced DDPM: the last step goes to alpha_bar = 1, so it returns its "
          "x0_hat", rtol=1e-12, atol=1e-12, index="sample")


# --- DPM-Solver++(2M) -----------------------------------------------------------------------------

@FAST
@given(sched=stand_ins(), steps=st.integers(1, 2), clip_x0=st.booleans())
def test_dpm_solver_in_one_or_two_steps_is_ddim(sched, steps, clip_x0):
    """The first step has no earlier x0_hat and the last goes to x_0 (lambda = inf): both are
    first order, DDIM's step at eta = 0. With one or two steps there is no other."""
    steps = min(steps, sched.T)
    kw = dict(steps=steps, dtype=torch.float64, clip_x0=clip_x0)
    x, _ = sched.dpm_solver_sample_loop(toy_model, (4, 3), generator=seed(6), **kw)
    x_ddim, _ = sched.ddim_sample_loop(toy_model, (4, 3), eta=0.0, generator=seed(6), **kw)
    close(x, x_ddim, f"{sched}, {steps} steps, clip_x0={clip_x0}: DPM-Solver++ against DDIM "
          "(eta = 0)", rtol=1e-9, atol=1e-9, index="sample")


def test_dpm_solver_second_order_step_with_a_constant_prediction_is_first_order():
    """D extrapolates from the previous x0_hat to this one: if both are the same, D is x0_hat."""
    sched = stand_in(50)
    g = seed(1)
    x_t, x0_hat = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.rand(4, 3, generator=g)
    first, h = sched.dpm_solver_step(x_t, 30, 20, x0_hat.double())
    second, h2 = sched.dpm_solver_step(x_t, 30, 20, x0_hat.double(), x0_hat.double(), h_before=0.7)
    assert h == h2 > 0
    close(second, first, "DPM-Solver++ step with x0_hat_before = x0_hat against the first-order "
          "step", rtol=1e-12, atol=1e-12, index="sample")


def test_dpm_solver_calls_the_model_once_per_step_and_ends_on_x0_hat():
    sched, seen = stand_in(100), []
    timesteps = sched.ddim_timesteps(7)

    def model(x, t):
        seen.append(t.tolist())
        return toy_model(x, t)
    x, traj = sched.dpm_solver_sample_loop(model, (3, 2), steps=7, generator=seed(0),
                                           record=timesteps)
    assert seen == [[t] * 3 for t in timesteps]
    assert [r[0] for r in traj] == timesteps
    close(x, traj[-1][2], "DPM-Solver++: the last step should return its x0_hat exactly", rtol=0,
          atol=0, index="sample")
    assert x.abs().max() <= 1, "clip_x0=True: x0_hat, and so the sample, lies in [-1, 1]"
    again, _ = sched.dpm_solver_sample_loop(toy_model, (3, 2), steps=7, generator=seed(0))
    assert torch.equal(again, x), "deterministic: the same seed (for x_T) gives the same samples"
    assert not torch.equal(sched.dpm_solver_sample_loop(toy_model, (3, 2), steps=7,
                                                        generator=seed(1))[0], x)


# --- both, on Gaussian data, against the exact answer ---------------------------------------------

def exact_ode(sched, x_T):
    """Where the sampling ODE (Song et al. 2021, Section 4.3; Lu et al. 2022) takes x_T, started at
    code t = T-1, at alpha_bar = 1, for data N(MU, SD^2). Its marginals are
    N(sqrt(a) MU, a SD^2 + 1 - a), a = alpha_bar, and its flow, being affine and increasing, keeps
    each point's standardized value (x - mean) / std."""
    a = sched.alphas_cumprod[-1].item()
    return MU + SD * (x_T - math.sqrt(a) * MU) / math.sqrt(a * SD ** 2 + 1 - a)


def deterministic_run(sched, sampler, steps):
    """(x_T, x_0) of 64 scalars run through a deterministic sampler with the exact eps*. x_T is what
    the model sees first."""
    seen, eps = [], eps_star(sched)

    def model(x, t):
        if not seen:
            seen.append(x)
        return eps(x, t)
    x0, _ = getattr(sched, sampler)(model, (1, 64), steps=steps, generator=seed(0),
                                    dtype=torch.float64, clip_x0=False)
    return seen[0], x0


def mean_and_std(x_T, x0):
    """With eps* affine in x, a deterministic sampler maps x_T to x0 = b + a x_T: for
    x_T ~ N(0, 1), its samples have mean b and std |a|, read off by least squares."""
    dx = x_T - x_T.mean()
    a = ((x0 - x0.mean()) * dx).sum() / (dx * dx).sum()
    return (x0.mean() - a * x_T.mean()).item(), a.abs().item()


STEPS = [5, 10, 20, 50, 100, 1000]


@pytest.mark.parametrize("sampler", ["ddim_sample_loop", "dpm_solver_sample_loop"])
@pytest.mark.parametrize("power", SHAPES)
def test_deterministic_samplers_converge_to_the_exact_ode_solution(sampler, power):
    sched = stand_in(1000, power=power)
    m, sd = exact_ode(sched, 0.0), exact_ode(sched, 1.0) - exact_ode(sched, 0.0)
    errors = []
    for steps in STEPS:
        x_T, x0 = deterministic_run(sched, sampler, steps)
        errors.append((x0 - exact_ode(sched, x_T)).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), (
        f"{sampler}, stand-in t^{power}: the largest error against the exact ODE solution should "
        f"shrink as the steps grow; at {STEPS} steps it is {[f'{e:.3g}' for e in errors]}")
    mean, std = mean_and_std(x_T, x0)
    # the error left at T steps: the last step jumps from t = 0 to alpha_bar = 1 in one go
    assert abs(mean - m) < 1e-3 and abs(std - sd) < 0.04 * sd, (
        f"{sampler}, stand-in t^{power}, T steps: mean {mean:.5f}, std {std:.5f}; the exact ODE "
        f"gives {m:.5f}, {sd:.5f}")


@FAST
@given(T=st.integers(10, 2000), L=st.floats(1, 20), power=st.sampled_from(SHAPES))
def test_dpm_solver_beats_ddim_at_10_steps(T, L, power):
    sched = stand_in(T, L, power)
    errors = {}
    for sampler in ("ddim_sample_loop", "dpm_solver_sample_loop"):
        x_T, x0 = deterministic_run(sched, sampler, 10)
        errors[sampler] = (x0 - exact_ode(sched, x_T)).abs().max().item()
    assert errors["dpm_solver_sample_loop"] < errors["ddim_sample_loop"], (
        f"{sched}, 10 steps: DPM-Solver++(2M) is off the exact ODE solution by "
        f"{errors['dpm_solver_sample_loop']:.3g}, DDIM by {errors['ddim_sample_loop']:.3g}")


# --- shapes, dtypes, devices, bad input -----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_new_samplers_keep_shape_dtype_and_device(device, dtype):
    sched, shape = stand_in(30), (2, 1, 5, 4)
    for sample in (partial(sched.respaced_sample_loop, variance="beta_tilde"),
                   sched.dpm_solver_sample_loop):
        g = torch.Generator(device).manual_seed(0)
        x, traj = sample(toy_model, shape, steps=5, generator=g, device=device, dtype=dtype,
                         record=[0, 5, 6, 29])
        assert x.shape == shape and x.dtype == dtype and x.device.type == device
        assert [r[0] for r in traj] == [29, 5]  # sampling order; only the timesteps visited
        assert all(r[1].device.type == r[2].device.type == "cpu" and r[1].shape == shape
                   for r in traj)


@pytest.mark.parametrize("call,fragments", [
    (lambda: stand_in(10).respaced_sample_loop(toy_model, (1, 1), steps=11),
     ["got 11", "from 1 to T = 10"]),
    (lambda: stand_in(10).respaced(0), ["got 0", "from 1 to T = 10"]),
    (lambda: stand_in(10).respaced_sample_loop(toy_model, (1, 1), steps=5, variance="large"),
     ["'large'", "'beta' or 'beta_tilde'"]),
    (lambda: stand_in(10).respaced_sample_loop(toy_model, (1, 1), steps=5, record=[10]),
     ["timestep 10", "from 0 to 9"]),
    (lambda: stand_in(10).dpm_solver_sample_loop(toy_model, (1, 1), steps=0),
     ["got 0", "from 1 to T = 10"]),
    (lambda: stand_in(10).dpm_solver_sample_loop(toy_model, (1, 1), steps=3, record=[-1]),
     ["timestep -1", "from 0 to 9"]),
])
def test_bad_input_names_value_and_range(call, fragments):
    with pytest.raises(ValueError) as error:
        call()
    assert all(f in str(error.value) for f in fragments), (str(error.value), fragments)
