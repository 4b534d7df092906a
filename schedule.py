"""The diffusion math by hand: noise schedules, the forward process q, and the samplers.

Read it beside Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (equation numbers below
are theirs unless another paper is named), and Song et al. 2021, "Denoising Diffusion Implicit
Models".

The paper's symbols and their names in the code (the same in every file of the lab):
    x_0                    x0                     the data: one image, in [-1, 1]
    x_0 predicted, Eq. 15  x0_hat                 the model's guess of x_0, from x_t and eps_hat
    x_t                    x_t                    x_0 noised to step t
    epsilon                eps                    the drawn noise, N(0, I)
    epsilon_theta(x_t, t)  eps_hat                the model's output: its guess of eps
    epsilon_theta          eps_theta              the noise predictor the samplers call
    beta_t                 betas                  the variance of the noise added at step t
    alpha_t = 1 - beta_t   alphas
    alpha_bar_t            alphas_cumprod (tables), alpha_bar (one value): prod_{s<=t} alpha_s
    beta_tilde_t, Eq. 7    variance (q_posterior) the variance of q(x_{t-1} | x_t, x_0)
    mu_tilde_t, Eq. 7      mean                   the mean of q(x_{t-1} | x_t, x_0)
    sigma_t^2              var                    the variance of the noise of one sampling step
    z                      z                      that noise before scaling, N(0, I)
    SNR_t                  snr                    alpha_bar_t / (1 - alpha_bar_t)
    alpha_t, sigma_t (Lu)  alpha, sigma           sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)
    lambda_t (Lu)          lam                    log(alpha_t / sigma_t), half of log SNR_t
A Schedule object (the tables of one schedule, with the methods that use them) is `sched`.

Index convention, once for the whole lab: the paper counts timesteps t = 1..T, the code counts
0..T-1. Code index t is paper step t + 1, so `alphas_cumprod[0]` is alpha_bar_1 and
`alphas_cumprod[T - 1]` is alpha_bar_T. alpha_bar_0 = 1 (no noise yet) is not stored; it appears as
`alphas_cumprod_prev[0]`, and `alpha_bar_at(t_prev, x)` returns it for t_prev = -1.

Every table is computed in float64 and kept on the CPU; each function gathers the values at t and
only then casts them to the dtype and device of x, so float32 sampling still gets exact tables.

Two choices the paper does not make for you. Clipping: by default the samplers clamp x0_hat to
[-1, 1] before taking the posterior mean, as the authors' code does (Algorithm 2 does not). Early in
sampling x0_hat is predicted by dividing by sqrt(alpha_bar_t), which is 0.006 at t = T-1 (linear),
so any error in eps_hat is blown up far outside the data range; clip_x0=False gives Algorithm 2
exactly. DDIM steps: ddim_timesteps is "trailing" (Lin et al. 2024). It starts at t = T-1, the only
step whose x_t really is close to N(0, I) (10 steps of 1000: 999, 899, ..., 99), and the last step
jumps straight to x_0 (alpha_bar = 1), so no noise is left in the output.

Two more samplers take fewer steps, over the same timesteps as DDIM: respaced DDPM (Nichol &
Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", Section 4: Algorithm 2 on the
subsequence, with its betas recomputed) and DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2: a
second-order multistep solver of the deterministic sampling ODE, written in log-SNR). DPM-Solver's
alpha_t (Lu et al.'s notation) is sqrt(alpha_bar_t), not Ho et al.'s 1 - beta_t.

The figure comparing the schedules (alpha_bar_t and log SNR_t against t, and one digit noised by
q(x_t | x_0) under each) is `python plots.py schedules`.

Next: unet.py, the model that predicts eps_hat.
"""
import math

import torch

SCHEDULES = ("linear", "cosine", "quadratic")
MAX_T = 100_000  # far beyond the papers' 1000 to 4000; more would only fill the memory
MAX_BETA = 0.999  # beta = 1 would erase x_0 in one step and make Eq. 15 divide by zero


def make_betas(name: str, T: int) -> torch.Tensor:
    """The noise variances beta_t (paper t = 1..T) of schedule `name`, float64 of shape (T,).

    linear:    Ho et al. 2020, beta from 1e-4 to 0.02 at T = 1000. For another T both ends are
               scaled by 1000 / T (as improved-diffusion does), so that alpha_bar_T stays near 0;
               without it T = 50 would end at alpha_bar_T ~ 0.6, far from the pure noise sampling
               starts from.
    cosine:    Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0),
               f(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008, and from it
               beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}. alpha_bar falls gently at both ends; the
               linear schedule is nearly pure noise for its last fifth (at t = 800 of 1000,
               alpha_bar is 0.0015 there and 0.094 here).
    quadratic: Ho et al.'s released code ("quad"): sqrt(beta) evenly spaced, so that beta runs from
               the same first to the same last value as `linear` for this T (1e-4 and 0.02 times
               1000 / T). It keeps more signal than linear at every t and ends at
               alpha_bar_T ~ 7e-4, not ~ 0.
    All betas are capped at 0.999 (for linear and quadratic this only bites when T <= 20).
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1; got T = {T!r}")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    # BEGIN EXERCISE 3: the three schedules of the docstring, as float64 tensors of shape (T,)
    # HINT: torch.linspace(a, b, T, dtype=torch.float64); cosine: beta_t as the docstring says
    if name in ("linear", "quadratic"):
        scale = 1000 / T
        lo, hi = scale * 1e-4, scale * 0.02
        if name == "linear":
            betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        else:
            betas = torch.linspace(math.sqrt(lo), math.sqrt(hi), T, dtype=torch.float64) ** 2
    else:  # cosine
        s = 0.008
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        # alpha_bar_t = prod_{i <= t} (1 - beta_i), so beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    # END EXERCISE
    return betas.clamp(max=MAX_BETA)


class Schedule:
    """Every precomputed table of one noise schedule, with q_sample, q_posterior and the samplers.

    Each table is a float64 tensor of shape (T,), indexed by the code timestep t = 0..T-1 (paper
    t + 1). Names follow improved-diffusion; the paper's symbol is in the comment.
    """

    def __init__(self, name="linear", T=1000):
        self._precompute(make_betas(name, T), name)

    @classmethod
    def from_betas(cls, betas, name="custom"):
        """A schedule from explicit betas (a 1-D sequence in (0, 1)) instead of a named one.

        The tests build their stand-in schedules this way, so that exercises 4-7 do not depend on
        exercise 3's make_betas.
        """
        sched = cls.__new__(cls)
        sched._precompute(torch.as_tensor(betas, dtype=torch.float64).clone(), name)
        return sched

    def _precompute(self, betas, name):
        if betas.dim() != 1 or len(betas) < 1:
            raise ValueError("betas must be a 1-D sequence of length T >= 1; "
                             f"got shape {tuple(betas.shape)}")
        bad = ~((betas > 0) & (betas < 1))  # also catches NaN
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError("every beta must lie in the open interval (0, 1); "
                             f"got betas[{i}] = {betas[i].item()}")
        self.name, self.T = name, len(betas)
        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.betas = betas                                     # beta_t
        self.alphas = 1 - betas                                # alpha_t = 1 - beta_t
        self.alphas_cumprod = alpha_bar                        # alpha_bar_t = prod_{s<=t} alpha_s
        self.alphas_cumprod_prev = alpha_bar_prev              # alpha_bar_{t-1}, alpha_bar_0 = 1
        self.sqrt_alphas_cumprod = alpha_bar.sqrt()            # sqrt(alpha_bar_t)
        self.sqrt_one_minus_alphas_cumprod = (1 - alpha_bar).sqrt()  # sqrt(1 - alpha_bar_t)
        self.snr = alpha_bar / (1 - alpha_bar)  # SNR_t = alpha_bar_t / (1 - alpha_bar_t)

    def __repr__(self):
        return f"Schedule({self.name!r}, T={self.T})"

    def _at(self, table, t, x):
        """table[t] shaped (B, 1, ..., 1) to broadcast against x of shape (B, ...), in x's dtype and
        device."""
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            bad = int(t[(t < 0) | (t >= self.T)][0])
            raise ValueError(f"timestep t = {bad} is out of range; "
                             f"code timesteps run from 0 to {self.T - 1}")
        # Cast on the CPU before moving: some accelerators (Apple's MPS) have no float64.
        return table[t.cpu()].to(x.dtype).to(x.device).view(-1, *[1] * (x.dim() - 1))

    def alpha_bar_at(self, t_prev, x):
        """alpha_bar at an earlier code timestep t_prev (long (B,), -1 to T-2), shaped like _at's
        values. t_prev = -1 means x_0 itself: alpha_bar = 1, the paper's alpha_bar_0."""
        # alphas_cumprod_prev is alphas_cumprod shifted by one: its entry t_prev + 1 is alpha_bar at
        # t_prev, and its entry 0 is alpha_bar_0 = 1.
        return self._at(self.alphas_cumprod_prev, t_prev + 1, x)

    # --- the forward process q ------------------------------------------------------------------

    def q_sample(self, x0, t, eps):
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Eq. 4, written as
        Eq. 9's x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. x0, eps: (B, ...);
        t: long (B,)."""
        # BEGIN EXERCISE 4: the forward process q(x_t | x_0)
        # HINT: Eq. 9; self._at(table, t, x0) is table[t], shaped to broadcast against x0
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * eps)
        # END EXERCISE

    def q_posterior(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), Eqs. 6-7. Returns (mean (B, ...),
        variance (B, 1, ..., 1), log_variance (B, 1, ..., 1)).

        mu_tilde_t is linear in x_0 and x_t: work out both coefficients, and beta_tilde_t, from
        Eq. 7 (in float64, from the tables betas, alphas, alphas_cumprod, alphas_cumprod_prev).
        beta_tilde is 0 at t = 0 (given x_0, the step to x_0 is certain) and log 0 = -inf; like
        improved-diffusion, log_variance at t = 0 is the log of beta_tilde at t = 1 instead (of
        beta_1 when T = 1). Everywhere else it is log beta_tilde_t.
        """
        # BEGIN EXERCISE 5: the posterior q(x_{t-1} | x_t, x_0)
        # HINT: Eq. 7 over whole tables (float64, shape (T,)), then self._at(table, t, x_t) gathers
        # HINT: table[t] shaped like x_t; log_variance: torch.log of the variance, t = 0 as said
        beta, alpha_bar, alpha_bar_prev = self.betas, self.alphas_cumprod, self.alphas_cumprod_prev
        variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)                  # beta_tilde_t
        coef_x0 = beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)
        coef_x_t = (1 - alpha_bar_prev) * self.alphas.sqrt() / (1 - alpha_bar)
        first = variance[1:2] if self.T > 1 else beta
        log_variance = torch.log(torch.cat([first, variance[1:]]))
        mean = self._at(coef_x0, t, x_t) * x0 + self._at(coef_x_t, t, x_t) * x_t  # mu_tilde_t
        return mean, self._at(variance, t, x_t), self._at(log_variance, t, x_t)
        # END EXERCISE

    def predict_x0_from_eps(self, x_t, t, eps_hat):
        """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t): Eq. 15, i.e. Eq. 9
        solved for x_0."""
        return ((x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps_hat)
                / self._at(self.sqrt_alphas_cumprod, t, x_t))

    # --- the reverse process: DDPM (Ho et al. 2020, Algorithm 2) -------------------------------

    @torch.no_grad()
    def p_sample(self, eps_theta, x_t, t, *, generator=None, clip_x0=True, variance="beta"):
        """One Algorithm 2 step: x_{t-1} = mu_theta(x_t, t) + sigma_t z. Returns (x_{t-1}, x0_hat).

        eps_theta(x_t, t) -> eps_hat predicts the noise; x_t: (B, ...); t: long (B,). variance picks
        sigma_t^2: "beta" (beta_t) or "beta_tilde" (beta_tilde_t, Eq. 7), the two choices of
        Section 3.2. z is drawn from `generator`.
        We compute mu_theta as "predict x_0 (Eq. 15), then take the posterior mean (Eq. 7)".
        Without clipping this is exactly Eq. 11,
            mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t);
        the detour through x0_hat is what lets us clip.
        """
        if variance not in ("beta", "beta_tilde"):
            raise ValueError(f"variance must be 'beta' or 'beta_tilde'; got {variance!r}")
        # BEGIN EXERCISE 6: one step of DDPM sampling, Algorithm 2
        # HINT: x0_hat by Eq. 15 (clamped if clip_x0), mean by q_posterior, + sigma_t z if t > 0
        x0_hat = self.predict_x0_from_eps(x_t, t, eps_theta(x_t, t))
        if clip_x0:
            # Not in Algorithm 2 (the authors' released code does it). At large t, Eq. 15 divides
            # by a tiny sqrt(alpha_bar_t) (0.006 at t = T-1, linear schedule), so a small error in
            # eps_hat becomes a huge x0_hat; the data lie in [-1, 1], so clamping there keeps an
            # imperfect model from drifting into saturated samples.
            x0_hat = x0_hat.clamp(-1, 1)
        mean, posterior_variance, _ = self.q_posterior(x0_hat, x_t, t)
        var = self._at(self.betas, t, x_t) if variance == "beta" else posterior_variance
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        # Algorithm 2: z = 0 at the last step (paper t = 1)
        not_last = (t > 0).view(-1, *[1] * (x_t.dim() - 1))
        return mean + not_last * var.sqrt() * z, x0_hat
        # END EXERCISE

    @torch.no_grad()
    def p_sample_loop(self, eps_theta, shape, *, generator=None, device="cpu", dtype=torch.float32,
                      clip_x0=True, variance="beta", record=()):
        """Algorithm 2 in full: x_T ~ N(0, I), then T steps down to x_0. shape: (B, ...) of the
        samples.

        Returns (x_0 samples of `shape`, trajectory): for each code t in `record`, in sampling order
        (from T-1 down), a tuple (t, x_t, x0_hat predicted from x_t), tensors on the CPU.
        All randomness, x_T included, comes from `generator` (which must live on `device`).
        """
        record = self._check_record(record)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # x_T ~ N(0, I)
        trajectory = []
        for i in reversed(range(self.T)):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            x_prev, x0_hat = self.p_sample(eps_theta, x, t, generator=generator, clip_x0=clip_x0,
                                           variance=variance)
            if i in record:
                trajectory.append((i, x.cpu(), x0_hat.cpu()))
            x = x_prev
        return x, trajectory

    def _check_record(self, record):
        bad = [t for t in record if not 0 <= t < self.T]
        if bad:
            raise ValueError(f"record holds timestep {bad[0]}, out of range; "
                             f"code timesteps run from 0 to {self.T - 1}")
        return set(record)

    # --- the reverse process: DDIM (Song et al. 2021) ------------------------------------------

    def ddim_timesteps(self, steps):
        """The `steps` code timesteps DDIM visits, from T-1 down: t_k = floor(k T / steps) - 1,
        k = steps..1.

        This "trailing" spacing (Lin et al. 2024) starts at t = T-1, the step whose x_t the forward
        process really brings close to N(0, I); starting lower would take pure noise for a less
        noisy x_t. With steps = T it is every timestep.
        """
        if not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"sampling steps must be an integer from 1 to T = {self.T}; "
                             f"got {steps!r}")
        return [(k * self.T) // steps - 1 for k in range(steps, 0, -1)]

    @torch.no_grad()
    def ddim_step(self, eps_theta, x_t, t, t_prev, *, eta=0.0, generator=None, clip_x0=True):
        """One DDIM step from code timestep t to an earlier t_prev (long (B,) each; t_prev = -1
        means x_0 itself, alpha_bar = 1; see alpha_bar_at). Song et al. 2021, Eq. 12:
            x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat
                     + sigma z,
        with Eq. 16's
            sigma^2 = eta^2 (1 - alpha_bar_prev) / (1 - alpha_bar_t)
                      * (1 - alpha_bar_t / alpha_bar_prev).
        eta = 0 is deterministic; eta = 1 over consecutive steps is DDPM with sigma^2 = beta_tilde.
        Returns (x_prev, x0_hat).
        """
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1]; got eta = {eta}")
        bad = (t_prev < -1) | (t_prev >= t)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"t_prev must lie in [-1, t - 1]; "
                             f"got t_prev = {int(t_prev[i])} for t = {int(t[i])}")
        # BEGIN EXERCISE 7: one DDIM step, Song et al. 2021
        # HINT: x0_hat by Eq. 15 (if clip_x0: clamp, rederive eps_hat from it), then Eqs. 16, 12
        eps_hat = eps_theta(x_t, t)
        x0_hat = self.predict_x0_from_eps(x_t, t, eps_hat)
        alpha_bar = self._at(self.alphas_cumprod, t, x_t)
        if clip_x0:
            x0_hat = x0_hat.clamp(-1, 1)  # not in the paper; the module docstring says why
            # the eps_hat that Eq. 9 pairs with this x0_hat
            eps_hat = (x_t - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()
        alpha_bar_prev = self.alpha_bar_at(t_prev, x_t)
        # sigma^2, Eq. 16
        var = eta ** 2 * (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        # Eq. 12; clamp: rounding can leave -1e-17 where the exact value is 0 (the last step, at
        # eta = 1)
        x_prev = (alpha_bar_prev.sqrt() * x0_hat
                  + (1 - alpha_bar_prev - var).clamp(min=0).sqrt() * eps_hat)
        if eta > 0:
            z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
            x_prev = x_prev + var.sqrt() * z
        return x_prev, x0_hat
        # END EXERCISE

    @torch.no_grad()
    def ddim_sample_loop(self, eps_theta, shape, steps=50, eta=0.0, *, generator=None, device="cpu",
                         dtype=torch.float32, clip_x0=True, record=()):
        """DDIM sampling in `steps` steps over `ddim_timesteps(steps)`, from x_T ~ N(0, I) to x_0.

        The last step goes to alpha_bar_prev = 1, so it returns x0_hat itself: no noise is left
        over. Returns (x_0 samples of `shape`, trajectory) as p_sample_loop does; only the
        timesteps in `record` that are among ddim_timesteps(steps) are recorded.
        """
        timesteps, record = self.ddim_timesteps(steps), self._check_record(record)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # x_T ~ N(0, I)
        trajectory = []
        for i, i_prev in zip(timesteps, timesteps[1:] + [-1]):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            x_prev, x0_hat = self.ddim_step(eps_theta, x, t, torch.full_like(t, i_prev), eta=eta,
                                            generator=generator, clip_x0=clip_x0)
            if i in record:
                trajectory.append((i, x.cpu(), x0_hat.cpu()))
            x = x_prev
        return x, trajectory


    # --- fewer steps: respaced DDPM (Nichol & Dhariwal 2021) and DPM-Solver++ (Lu et al. 2022) ---

    def respaced(self, steps):
        """This schedule on the subsequence S = ddim_timesteps(steps) of its timesteps, as a new
        Schedule whose code timestep i stands for S[i] (S increasing here). Returns (it, S).

        Nichol & Dhariwal 2021, Section 4: alpha_bar stays the same at each kept step, so the
        betas become
            beta_{S_i} = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}   (alpha_bar = 1 before S_0),
        and every other table, the posterior variance beta_tilde included, follows from them.
        """
        kept = self.ddim_timesteps(steps)[::-1]
        if steps == self.T:
            return self, kept  # every step kept: nothing to respace (dividing would only round)
        alpha_bar = self.alphas_cumprod[kept]
        alpha_bar_before = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return Schedule.from_betas(1 - alpha_bar / alpha_bar_before,
                                   f"{self.name}, {steps} of {self.T} steps"), kept

    @torch.no_grad()
    def respaced_sample_loop(self, eps_theta, shape, steps=50, *, generator=None, device="cpu",
                             dtype=torch.float32, clip_x0=True, variance="beta", record=()):
        """Ancestral DDPM sampling (Algorithm 2) in `steps` steps: p_sample_loop on the schedule
        respaced to ddim_timesteps(steps) (Nichol & Dhariwal 2021, Section 4; see `respaced`),
        while the model still sees the original timesteps. Like DDIM's, the last step goes to
        alpha_bar = 1, so it returns x0_hat. With steps = T it is p_sample_loop, draw for draw.

        Returns (x_0 samples of `shape`, trajectory) as p_sample_loop does, with the original
        timesteps; only the timesteps in `record` that are among ddim_timesteps(steps) are recorded.
        """
        record = self._check_record(record)
        sched, kept = self.respaced(steps)
        original = torch.tensor(kept, device=device)

        def respaced_eps_theta(x_t, i):  # respaced timestep i is original timestep kept[i]
            return eps_theta(x_t, original[i])
        x, trajectory = sched.p_sample_loop(
            respaced_eps_theta, shape, generator=generator, device=device, dtype=dtype,
            clip_x0=clip_x0, variance=variance,
            record=[i for i, t in enumerate(kept) if t in record])
        return x, [(kept[i], x_t, x0_hat) for i, x_t, x0_hat in trajectory]

    def _lambda(self, t):
        """DPM-Solver's lambda_t = log(alpha_t / sigma_t), half of log SNR_t, at code timestep t,
        as a Python float (float64)."""
        return 0.5 * math.log(self.snr[t].item())

    def dpm_solver_step(self, x_t, t, t_prev, x0_hat, x0_hat_before=None, h_before=None):
        """One DPM-Solver++ step (Lu et al. 2022, Algorithm 2) from code timestep t to an earlier
        t_prev >= 0 (ints), given x0_hat predicted at t. Returns (x_prev, h).

        The solver lives in lambda: alpha^2 = sigmoid(2 lambda) and sigma^2 = sigmoid(-2 lambda),
        so both follow from lambda alone. With h = lambda_{t_prev} - lambda_t > 0 (lambda rises as
        the noise falls),
            x_prev = (sigma_{t_prev} / sigma_t) x_t - alpha_{t_prev} (e^{-h} - 1) D,
        where D = x0_hat at first order (without x0_hat_before) and, at second order, D
        extrapolates from x0_hat_before, predicted one step earlier (h_before its step's h), to
        this x0_hat:
            D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_hat_before,   r = h_before / h.
        """
        def log_sigmoid(v):  # log(1 / (1 + e^-v)), without overflow
            return min(v, 0) - math.log1p(math.exp(-abs(v)))
        lam, lam_prev = self._lambda(t), self._lambda(t_prev)
        h = lam_prev - lam
        sigma_ratio = math.exp((log_sigmoid(-2 * lam_prev) - log_sigmoid(-2 * lam)) / 2)
        alpha_prev = math.exp(log_sigmoid(2 * lam_prev) / 2)
        D = x0_hat
        if x0_hat_before is not None:
            r = h_before / h
            D = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_hat_before
        return sigma_ratio * x_t - alpha_prev * math.expm1(-h) * D, h  # expm1(-h) = e^-h - 1

    @torch.no_grad()
    def dpm_solver_sample_loop(self, eps_theta, shape, steps=20, *, generator=None, device="cpu",
                               dtype=torch.float32, clip_x0=True, record=()):
        """DPM-Solver++(2M), Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
        Diffusion Probabilistic Models", Algorithm 2: the deterministic sampling ODE solved by a
        multistep second-order method on the data prediction x0_hat, in `steps` model calls over
        ddim_timesteps(steps), from x_T ~ N(0, I) to x_0 (see dpm_solver_step).

        The first step is first order (there is no earlier x0_hat yet), and so is the last, to x_0
        itself (alpha_bar = 1, lambda = inf, e^{-h} = 0), which returns x0_hat, as DDIM does and
        as common implementations do. x0_hat is clamped to [-1, 1] if clip_x0. `generator` draws
        x_T only. Returns (x_0 samples of `shape`, trajectory) as ddim_sample_loop does.
        """
        timesteps, record = self.ddim_timesteps(steps), self._check_record(record)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # x_T ~ N(0, I)
        trajectory, x0_hat_before, h_before = [], None, None
        for i, i_prev in zip(timesteps, timesteps[1:] + [-1]):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            x0_hat = self.predict_x0_from_eps(x, t, eps_theta(x, t))  # the data prediction, Eq. 15
            if clip_x0:
                x0_hat.clamp_(-1, 1)  # in place; the module docstring says why
            if i in record:
                trajectory.append((i, x.cpu(), x0_hat.cpu()))
            if i_prev == -1:
                x = x0_hat  # the last step, first order, lands on x0_hat itself
            else:
                x, h = self.dpm_solver_step(x, i, i_prev, x0_hat, x0_hat_before, h_before)
                x0_hat_before, h_before = x0_hat, h
        return x, trajectory


def guided_eps(eps_cond, eps_uncond, scale):
    """Classifier-free guidance (Ho & Salimans 2022): the noise prediction that sampling follows,
    from the model's prediction with the condition (eps_cond) and without it (eps_uncond), each
    (B, ...):

        eps_hat = eps_uncond + scale * (eps_cond - eps_uncond)

    scale = 1 is the plain conditional model, scale = 0 the unconditional one, and scale > 1 goes
    past the conditional prediction, away from the unconditional one: samples that fit their
    condition more clearly, at the cost of variety. (Ho & Salimans write (1 + w) eps_cond -
    w eps_uncond: scale = 1 + w.)
    """
    # BEGIN EXERCISE 12: classifier-free guidance
    # HINT: start from eps_uncond and move `scale` times the step from eps_uncond to eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)
    # END EXERCISE


def classifier_free_guidance(model, y, scale, null_label):
    """Turn a conditional model(x_t, t, y) -> eps_hat into the guided eps_theta(x_t, t) that the
    samplers call, by guided_eps.

    y: the conditions, (B,) class labels (Part 2) or (B, L) prompt tokens (Part 3). null_label: the
    condition the model was trained with when the real one was dropped: an int label (the "no
    label" class), or a tensor shaped like y (the empty prompt's tokens). Both halves, with and
    without the condition, run as one batch of 2B: one model call per step.
    """
    null = torch.full_like(y, null_label) if isinstance(null_label, int) else null_label

    def eps_theta(x_t, t):
        eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                     torch.cat([y, null])).chunk(2)
        return guided_eps(eps_cond, eps_uncond, scale)
    return eps_theta
