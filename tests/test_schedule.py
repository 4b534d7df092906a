"""Tests that prove schedule.py's math: the tables, the forward process, and both samplers end to end.

Statistical checks derive their tolerance from the sample size: a sample mean of N draws with standard
deviation sd is off by sd / sqrt(N) on average, a sample std by sd / sqrt(2 (N - 1)); we allow Z of those,
with Z chosen so that a correct implementation fails one comparison with probability 1e-6.

@pytest.mark.exN grades a test as part of exercise N of the student edition (make_assignment.py); its
`depends` lists the other exercises whose code the test also runs. Unmarked tests check code students are given.
"""
import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings, strategies as st

from schedule import SCHEDULES, Schedule, classifier_free_guidance, make_betas

Z = NormalDist().inv_cdf(1 - 1e-6 / 2)  # ~4.9: two-sided false-alarm rate 1e-6 per comparison
FAST = settings(max_examples=25, deadline=None)
schedules = st.sampled_from(SCHEDULES)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run thousands of small tensor ops; extra threads only add overhead (a lot of it on a busy
    2-core machine), so run them on one thread and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def close(actual, expected, rtol=1e-7, atol=1e-7):
    """|actual - expected| <= atol + rtol |expected| everywhere (torch.testing.assert_close is far slower on
    long tensors)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


# --- the schedules and their tables ---------------------------------------------------------------------

@pytest.mark.ex3
@FAST
@given(name=schedules, T=st.integers(1, 2000))
def test_tables_are_valid_for_any_T(name, T):
    s = Schedule(name, T)
    assert s.T == T and s.name == name and s.betas.dtype == torch.float64
    for table in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                  "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                  "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        value = getattr(s, table)
        assert value.shape == (T,) and value.dtype == torch.float64 and torch.isfinite(value).all(), table
    assert ((s.betas > 0) & (s.betas < 1)).all()
    ab = s.alphas_cumprod
    assert ((ab > 0) & (ab < 1)).all() and (ab[1:] < ab[:-1]).all()  # strictly decreasing in (0, 1)
    assert ((s.posterior_variance >= 0) & (s.posterior_variance <= s.betas)).all()  # 0 <= beta_tilde <= beta
    assert s.posterior_variance[0] == 0  # the last reverse step knows x_0 exactly
    close(s.posterior_log_variance_clipped[1:], s.posterior_variance[1:].log())
    if T > 1:  # log 0 replaced by the next step's value, as in improved-diffusion
        assert s.posterior_log_variance_clipped[0] == s.posterior_variance[1].log()
    close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=1e-14, atol=0)
    close(s.alphas_cumprod_prev[1:], ab[:-1], rtol=0, atol=0)
    assert s.alphas_cumprod_prev[0] == 1
    close(s.sqrt_alphas_cumprod ** 2, ab, rtol=1e-14, atol=0)
    close(s.sqrt_one_minus_alphas_cumprod ** 2, 1 - ab, rtol=1e-14, atol=0)
    close(s.snr, ab / (1 - ab), rtol=1e-14, atol=0)


@pytest.mark.ex5(depends=[3])
@FAST
@given(name=schedules, T=st.integers(1, 2000))
def test_posterior_is_bayes_rule(name, T):
    """q(x_{t-1}, x_t | x_0) is one Gaussian, reachable two ways: forwards, q(x_{t-1} | x_0) then
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise; or backwards, q(x_t | x_0) then the posterior
    N(coef1 x_0 + coef2 x_t, beta_tilde). The posterior is right iff both give the same mean, variance and
    covariance; with a = alpha_bar_t, p = alpha_bar_{t-1}, these are the three identities below.
    The posterior mean is linear in (x_0, x_t), so q_posterior at unit inputs reads off coef1 and coef2."""
    s, t = Schedule(name, T), torch.arange(T)
    one, zero = torch.ones(T, 1, dtype=torch.float64), torch.zeros(T, 1, dtype=torch.float64)
    c1, var, log_var = (v.flatten() for v in s.q_posterior(one, zero, t))
    c2 = s.q_posterior(zero, one, t)[0].flatten()
    a, p = s.alphas_cumprod, s.alphas_cumprod_prev
    # float64 rounding, amplified up to 1 / beta_1 times where 1 - alpha_bar_1 = 1 - (1 - beta_1) cancels
    tol = dict(rtol=0, atol=16 * torch.finfo(torch.float64).eps / s.betas.min().item())
    close(c1 + c2 * a.sqrt(), p.sqrt(), **tol)                           # E[x_{t-1} | x_0]
    close(c2 ** 2 * (1 - a) + var, 1 - p, **tol)                         # Var[x_{t-1} | x_0]
    close(c2 * (1 - a), s.alphas.sqrt() * (1 - p), **tol)                # Cov[x_{t-1}, x_t | x_0]
    close(log_var, s.posterior_log_variance_clipped, rtol=0, atol=0)


@pytest.mark.ex3
def test_schedule_definitions():
    """The constants of the papers, and improved-diffusion's 1000 / T scaling of the linear ends."""
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b = make_betas("linear", 500)
    assert b[0].item() == pytest.approx(2e-4) and b[-1].item() == pytest.approx(0.04)
    q = make_betas("quadratic", 1000).sqrt()
    assert q[0].item() == pytest.approx(1e-2) and q[-1].item() == pytest.approx(math.sqrt(0.02))
    close(q.diff(), torch.full((999,), q.diff().mean().item(), dtype=torch.float64))
    # cosine: alpha_bar_t = f(t) / f(0) wherever the 0.999 cap did not bite (only at the very end)
    T, s = 1000, 0.008
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    sched = Schedule("cosine", T)
    capped = sched.betas == 0.999
    assert capped.sum() == 1 and capped[-1]
    close(sched.alphas_cumprod[:-1], (f[1:] / f[0])[:-1], rtol=1e-12, atol=0)


def test_from_betas_matches_named_schedule():
    named = Schedule("cosine", 37)
    custom = Schedule.from_betas(named.betas.tolist())
    assert custom.T == 37 and custom.name == "custom"
    for table in ("alphas_cumprod", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"):
        close(getattr(custom, table), getattr(named, table), rtol=0, atol=0)


# --- the forward process --------------------------------------------------------------------------------

@pytest.mark.ex4(depends=[3])
@settings(max_examples=15, deadline=None)
@given(name=schedules, pairs=st.lists(st.tuples(st.integers(0, 999), st.floats(-1, 1)), min_size=1, max_size=4),
       seed=st.integers(0, 2 ** 31))
def test_q_sample_statistics(name, pairs, seed):
    """Over many noise draws, x_t = q_sample(x_0, t, noise) has mean sqrt(alpha_bar_t) x_0 and variance
    1 - alpha_bar_t (Eq. 4). Each row of the batch is one (t, x_0) pair with N draws."""
    s, N = Schedule(name, 1000), 20_000
    t = torch.tensor([p[0] for p in pairs])
    x0 = torch.tensor([p[1] for p in pairs], dtype=torch.float64)[:, None].expand(-1, N)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_t = s.q_sample(x0, t, noise)
    mean, var = s.alphas_cumprod[t].sqrt() * x0[:, 0], 1 - s.alphas_cumprod[t]
    assert ((x_t.mean(1) - mean).abs() <= Z * (var / N).sqrt()).all()
    assert ((x_t.var(1) - var).abs() <= Z * var * math.sqrt(2 / (N - 1))).all()


@pytest.mark.ex4(depends=[3])
@FAST
@given(name=schedules, T=st.integers(1, 2000), seed=st.integers(0, 2 ** 31))
def test_predict_x0_inverts_q_sample(name, T, seed):
    s, g = Schedule(name, T), torch.Generator().manual_seed(seed)
    x0 = torch.rand(16, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (16,), generator=g)
    t[0] = T - 1  # the noisiest step divides by the smallest sqrt(alpha_bar)
    x_t = s.q_sample(x0, t, eps)
    # float64 rounding in x_t - sqrt(1 - alpha_bar) eps, amplified by the division by sqrt(alpha_bar_t)
    # (which reaches 1e-9 for the capped schedules at small T)
    bound = 8 * torch.finfo(torch.float64).eps * (1 + x_t.abs() + eps.abs()) / s.sqrt_alphas_cumprod[t, None]
    assert ((s.predict_x0_from_eps(x_t, t, eps) - x0).abs() <= bound).all()


# --- the reverse process, step by step ------------------------------------------------------------------

def toy_model(x, t):
    """Any deterministic eps predictor will do; this one makes x_0_hat leave [-1, 1] so clipping acts."""
    return torch.sin(3 * x) + 0.001 * t.view(-1, *[1] * (x.dim() - 1))


@pytest.mark.ex6(depends=[3, 5])
@FAST
@given(name=schedules, T=st.integers(1, 300), variance=st.sampled_from(["beta", "beta_tilde"]),
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
    sigma2 = beta if variance == "beta" else s.posterior_variance[t][:, None]
    eq11 = (x_t - beta / (1 - a).sqrt() * toy_model(x_t, t)) / alpha.sqrt()
    expected = eq11 + (t > 0)[:, None] * sigma2.sqrt() * z
    close(x_prev, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.ex6(depends=[3, 5])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_last_ddpm_step_adds_no_noise(variance):
    s = Schedule("linear", 50)
    x_t, t = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.zeros(8, dtype=torch.long)
    out = [s.p_sample(toy_model, x_t, t, generator=torch.Generator().manual_seed(k), clip_x0=False,
                      variance=variance) for k in (1, 2)]
    close(out[0][0], out[1][0], rtol=0, atol=0)  # the noise drawn does not matter
    close(out[0][0], out[0][1], rtol=1e-12, atol=1e-12)  # x_0 = x_0_hat from x_1


@pytest.mark.ex7(depends=[3, 5, 6])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_over_consecutive_steps_is_ddpm_beta_tilde(clip_x0):
    """With eta = 1 and steps = T, Eq. 16 gives sigma^2 = beta_tilde and Eq. 12 reduces to the posterior
    mean, so the two samplers must produce the same samples from the same seed (with clipping too, because
    DDIM rederives eps from the clipped x_0_hat)."""
    s = Schedule("cosine", 40)
    ddpm, _ = s.p_sample_loop(toy_model, (16, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64,
                              clip_x0=clip_x0, variance="beta_tilde")
    ddim, _ = s.ddim_sample_loop(toy_model, (16, 3), steps=40, eta=1.0, generator=torch.Generator().manual_seed(5),
                                 dtype=torch.float64, clip_x0=clip_x0)
    close(ddim, ddpm, rtol=1e-10, atol=1e-10)


@pytest.mark.ex7(depends=[3])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_last_step_returns_x0_hat(eta):
    s = Schedule("linear", 100)
    timesteps = s.ddim_timesteps(7)
    x, traj = s.ddim_sample_loop(toy_model, (4, 5), steps=7, eta=eta, generator=torch.Generator().manual_seed(0),
                                 record=timesteps)
    assert [r[0] for r in traj] == timesteps
    close(x, traj[-1][2], rtol=0, atol=0)  # alpha_bar_prev = 1: no residual noise


@FAST
@given(T=st.integers(1, 2000), data=st.data())
def test_ddim_timesteps(T, data):
    steps = data.draw(st.integers(1, T))
    ts = Schedule("linear", T).ddim_timesteps(steps)
    assert len(ts) == steps and ts[0] == T - 1 and ts[-1] >= 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    if steps == T:
        assert ts == list(range(T - 1, -1, -1))


# --- the samplers end to end: Gaussian data, whose optimal noise predictor is known ---------------------

MU, SD, N = 0.3, 0.5, 20_000  # data N(MU, SD^2); N independent scalar samples per run


def eps_star(s):
    """E[eps | x_t] for data N(MU, SD^2): sqrt(1 - a) (x_t - sqrt(a) MU) / (a SD^2 + 1 - a), a = alpha_bar_t."""
    def model(x, t):
        a = s.alphas_cumprod[t].view(-1, 1).to(x)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD ** 2 + 1 - a)
    return model


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


# The two chains below are written from the papers' formulas, independently of schedule.py's code paths.

def ddpm_moments(s, variance):
    t = torch.arange(s.T - 1, -1, -1)  # sampling order
    beta, alpha, a = (table[t, None] for table in (s.betas, s.alphas, s.alphas_cumprod))
    sigma2 = (beta if variance == "beta" else s.posterior_variance[t, None]) * (t[:, None] > 0)  # Algorithm 2

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


def check_samples(x, m, sd):
    """The empirical mean and std of x (all entries i.i.d.) match the exact m, sd up to sampling error."""
    n = x.numel()
    assert abs(x.mean().item() - m) <= Z * sd / math.sqrt(n), (x.mean().item(), m)
    assert abs(x.std().item() - sd) <= Z * sd / math.sqrt(2 * (n - 1)), (x.std().item(), sd)


# Each schedule once; the two DDPM variance choices alternate so that both are covered.
@pytest.mark.ex6(depends=[3, 5])
@pytest.mark.parametrize("name,variance", [("linear", "beta"), ("cosine", "beta_tilde"), ("quadratic", "beta")])
def test_ddpm_samples_gaussian_data(name, variance):
    s = Schedule(name, 1000)
    m, sd = ddpm_moments(s, variance)
    # The discrete chain with T = 1000 reproduces the data distribution to within 1% of SD...
    assert abs(m - MU) < 0.01 * SD and abs(sd - SD) < 0.01 * SD, (m, sd)
    # ...and the code produces exactly that chain. (N scalars as a (10, N/10) batch: fewer coefficient gathers.)
    x, _ = s.p_sample_loop(eps_star(s), (10, N // 10), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64, clip_x0=False, variance=variance)
    check_samples(x, m, sd)


@pytest.mark.ex7(depends=[3])
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_samples_gaussian_data(name, steps, eta):
    """The mean comes out right; the std comes out smaller than SD (see the next test), and the code must
    reproduce that exact discrete behaviour, not the ideal one."""
    s = Schedule(name, 1000)
    m, sd = ddim_moments(s, steps, eta)
    assert abs(m - MU) < 0.01 * SD and sd < SD, (m, sd)
    x, _ = s.ddim_sample_loop(eps_star(s), (10, N // 10), steps=steps, eta=eta,
                              generator=torch.Generator().manual_seed(1), dtype=torch.float64, clip_x0=False)
    check_samples(x, m, sd)


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


# --- shapes, dtypes, devices, seeds, trajectories ---------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_pass_through(device, dtype):
    s = Schedule("cosine", 30)
    x0 = torch.rand(3, 1, 5, 4, dtype=dtype, device=device) * 2 - 1
    eps, t = torch.randn_like(x0), torch.tensor([0, 7, 29], device=device)
    x_t = s.q_sample(x0, t, eps)
    mean, var, log_var = s.q_posterior(x0, x_t, t)
    outputs = [x_t, mean, s.predict_x0_from_eps(x_t, t, eps), *s.p_sample(toy_model, x_t, t)]
    assert all(o.shape == x0.shape and o.dtype == dtype and o.device == x0.device for o in outputs)
    assert all(o.shape == (3, 1, 1, 1) and o.dtype == dtype and o.device == x0.device for o in (var, log_var))
    g = torch.Generator(device).manual_seed(0)
    assert s.ddim_timesteps(5) == [29, 23, 17, 11, 5]
    shape = (2, 1, 5, 4)
    for x, traj in (s.p_sample_loop(toy_model, shape, generator=g, device=device, dtype=dtype, record=[5, 29]),
                    s.ddim_sample_loop(toy_model, shape, steps=5, generator=g, device=device, dtype=dtype,
                                       record=[0, 5, 6, 29])):
        assert x.shape == shape and x.dtype == dtype and x.device == x0.device
        assert [r[0] for r in traj] == [29, 5]  # in sampling order; DDIM keeps only the timesteps it visits
        assert all(r[1].device.type == r[2].device.type == "cpu" and r[1].shape == x.shape for r in traj)


@pytest.mark.ex6(depends=[3, 5])
def test_model_sees_long_timesteps_in_sampling_order():
    seen = []
    s = Schedule("linear", 5)
    s.p_sample_loop(lambda x, t: seen.append(t) or torch.zeros_like(x), (3, 2))
    assert [tt.tolist() for tt in seen] == [[t] * 3 for t in (4, 3, 2, 1, 0)]
    assert all(tt.dtype == torch.long for tt in seen)


@pytest.mark.ex6(depends=[3, 5])
def test_clipping_keeps_x0_hat_in_data_range():
    s = Schedule("linear", 20)
    for clip_x0 in (True, False):
        _, traj = s.p_sample_loop(toy_model, (8, 3), generator=torch.Generator().manual_seed(0), clip_x0=clip_x0,
                                  record=range(20))
        largest = max(r[2].abs().max().item() for r in traj)
        assert largest <= 1 if clip_x0 else largest > 1  # the toy model needs it


@pytest.mark.ex6(depends=[3, 5])
def test_trajectory_holds_x_t_and_its_x0_hat():
    s = Schedule("linear", 20)
    x, traj = s.p_sample_loop(toy_model, (4, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                              clip_x0=False, record=range(20))
    assert [r[0] for r in traj] == list(range(19, -1, -1)) and traj[-1][2].shape == x.shape
    for t, x_t, x0_hat in traj:
        tt = torch.full((4,), t)
        close(x0_hat, s.predict_x0_from_eps(x_t, tt, toy_model(x_t, tt)))
    assert s.p_sample_loop(toy_model, (4, 3))[1] == []


@pytest.mark.parametrize("sampler", [pytest.param("ddpm", marks=pytest.mark.ex6(depends=[3, 5])),
                                     pytest.param("ddim", marks=pytest.mark.ex7(depends=[3]))])
def test_same_seed_same_samples(sampler):
    s = Schedule("quadratic", 25)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return s.p_sample_loop(toy_model, (6, 2), generator=g)[0]
        return s.ddim_sample_loop(toy_model, (6, 2), steps=8, eta=0.5, generator=g)[0]
    close(run(11), run(11), rtol=0, atol=0)
    assert not torch.equal(run(11), run(12))


# --- classifier-free guidance ---------------------------------------------------------------------------

def test_classifier_free_guidance():
    calls = []

    def model(x, t, y):  # a class-conditional "eps": depends on the label, the time and x
        calls.append(len(y))
        return x * (y.view(-1, 1) + 1) + t.view(-1, 1)

    x, t, y = torch.randn(4, 3), torch.tensor([5, 5, 2, 0]), torch.tensor([0, 3, 1, 9])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    calls.clear()
    for scale in (0.0, 1.0, 3.5):
        close(classifier_free_guidance(model, y, scale, null_label=10)(x, t), uncond + scale * (cond - uncond),
              rtol=1e-6, atol=1e-5)  # float32
    assert calls == [8, 8, 8]  # both halves in one batched call
    close(classifier_free_guidance(model, y, 1.0, 10)(x, t), cond, rtol=1e-6, atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,fragments", [
    (lambda: make_betas("linear", 0), ["T = 0", ">= 1"]),
    (lambda: Schedule("cosine", -3), ["T = -3", ">= 1"]),
    (lambda: make_betas("linear", 2.5), ["T = 2.5", "integer >= 1"]),
    (lambda: make_betas("sigmoidal", 10), ["'sigmoidal'", "linear, cosine, quadratic"]),
    (lambda: Schedule.from_betas([0.1, 1.0]), ["betas[1] = 1.0", "(0, 1)"]),
    (lambda: Schedule.from_betas([0.0, 0.1]), ["betas[0] = 0.0", "(0, 1)"]),
    (lambda: Schedule.from_betas([0.1, float("nan")]), ["betas[1] = nan", "(0, 1)"]),
    (lambda: Schedule.from_betas([]), ["shape (0,)", "length T >= 1"]),
    (lambda: Schedule("linear", 10).ddim_timesteps(0), ["got 0", "from 1 to T = 10"]),
    (lambda: Schedule("linear", 10).ddim_sample_loop(toy_model, (1, 1), steps=11), ["got 11", "from 1 to T = 10"]),
    (lambda: Schedule("linear", 10).q_sample(torch.zeros(2, 1), torch.tensor([0, 10]), torch.zeros(2, 1)),
     ["t = 10", "from 0 to 9"]),
    (lambda: Schedule("linear", 10).p_sample(toy_model, torch.zeros(2, 1), torch.tensor([-1, 3])),
     ["t = -1", "from 0 to 9"]),
    (lambda: Schedule("linear", 10).ddim_step(toy_model, torch.zeros(2, 1), torch.tensor([4, 4]), torch.tensor([3, 4])),
     ["t_prev = 4 for t = 4", "[-1, t - 1]"]),
    (lambda: Schedule("linear", 10).p_sample_loop(toy_model, (1, 1), record=[3, 10]), ["timestep 10", "from 0 to 9"]),
    (lambda: Schedule("linear", 10).p_sample(toy_model, torch.zeros(1, 1), torch.tensor([3]), variance="large"),
     ["'large'", "'beta' or 'beta_tilde'"]),
    (lambda: Schedule("linear", 10).ddim_sample_loop(toy_model, (1, 1), steps=5, eta=1.5), ["eta = 1.5", "[0, 1]"]),
])
def test_bad_input_names_value_and_range(call, fragments):
    with pytest.raises(ValueError) as error:
        call()
    assert all(f in str(error.value) for f in fragments), (str(error.value), fragments)
