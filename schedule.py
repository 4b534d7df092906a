"""The diffusion math, by hand: noise schedules, the forward process q, and the DDPM / DDIM samplers.

Read it beside Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (equation numbers below are
theirs unless another paper is named), and Song et al. 2021, "Denoising Diffusion Implicit Models".

Index convention, once for the whole lab: the paper counts timesteps t = 1..T, the code counts 0..T-1.
Code index t is paper step t + 1, so `alphas_cumprod[0]` is alpha_bar_1 and `alphas_cumprod[T - 1]` is
alpha_bar_T. alpha_bar_0 = 1 (no noise yet) is not stored; it appears as `alphas_cumprod_prev[0]`.

Every coefficient is computed once, in float64, and kept on the CPU; each function gathers the values at
t and only then casts them to the dtype and device of x, so float32 sampling still gets exact tables.

Two choices the paper does not make for you. Clipping: by default the samplers clamp the predicted
x_0 to [-1, 1] before taking the posterior mean, as the authors' code does (Algorithm 2 does not).
Early in sampling x_0 is predicted by dividing by sqrt(alpha_bar_t), which is 0.006 at t = T-1
(linear), so any error in eps is blown up far outside the data range; clip_x0=False gives Algorithm
2 exactly. DDIM steps: ddim_timesteps is "trailing" (Lin et al. 2024). It starts at t = T-1, the
only step whose x_t really is close to N(0, I) (10 steps of 1000: 999, 899, ..., 99), and the last
step jumps straight to x_0 (alpha_bar = 1), so no noise is left in the output.

    python schedule.py                   # figure comparing the schedules -> runs/schedules.png

The figure: alpha_bar_t and log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)) against t for each
schedule (top), and one digit (the first MNIST training image from $MNIST_DIR or --mnist-dir; a
drawn "3" without either) noised by q(x_t | x_0) at seven t, with the same noise under every
schedule, so only the schedule differs (bottom). The script also prints alpha_bar at t = 0 and T-1
and the log SNR range.
"""
import gzip
import math
import os
import zlib

import numpy as np
import torch

SCHEDULES = ("linear", "cosine", "quadratic")
MAX_T = 100_000  # far beyond the papers' 1000 to 4000; more would only fill the memory
MAX_BETA = 0.999  # beta = 1 would erase x_0 in one step and make Eq. 15 divide by zero


def make_betas(name: str, T: int) -> torch.Tensor:
    """The noise variances beta_t (paper t = 1..T) of schedule `name`, as a float64 tensor of shape (T,).

    linear:    Ho et al. 2020, beta from 1e-4 to 0.02 at T = 1000. For another T both ends are scaled by
               1000 / T (as improved-diffusion does), so that alpha_bar_T stays near 0; without it T = 50
               would end at alpha_bar_T ~ 0.6, far from the pure noise sampling starts from.
    cosine:    Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
               s = 0.008. alpha_bar falls gently at both ends; the linear schedule is nearly pure noise
               for its last fifth (at t = 800 of 1000, alpha_bar is 0.0015 there and 0.094 here).
    quadratic: Ho et al.'s released code ("quad"): sqrt(beta) evenly spaced, so that beta runs from the
               same first to the same last value as `linear` for this T (1e-4 and 0.02 times 1000 / T).
               It keeps more signal than linear at every t and ends at alpha_bar_T ~ 7e-4, not ~ 0.
    All betas are capped at 0.999 (for linear and quadratic this only bites when T <= 20).
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1; got T = {T!r}")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    # BEGIN EXERCISE 3: the three schedules of the docstring, as float64 tensors of shape (T,)
    # HINT: torch.linspace(a, b, T, dtype=torch.float64); cosine: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    if name in ("linear", "quadratic"):
        scale = 1000 / T
        lo, hi = scale * 1e-4, scale * 0.02
        if name == "linear":
            betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        else:
            betas = torch.linspace(math.sqrt(lo), math.sqrt(hi), T, dtype=torch.float64) ** 2
    else:  # cosine
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        # alpha_bar_t = prod_{i <= t} (1 - beta_i), so beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    # END EXERCISE
    return betas.clamp(max=MAX_BETA)


class Schedule:
    """Every precomputed quantity of one noise schedule, plus q_sample, q_posterior and the samplers.

    Each table is a float64 tensor of shape (T,), indexed by the code timestep t = 0..T-1 (paper t + 1).
    Names follow improved-diffusion; the paper's symbol is in the comment.
    """

    def __init__(self, name="linear", T=1000):
        self._precompute(make_betas(name, T), name)

    @classmethod
    def from_betas(cls, betas, name="custom"):
        """A schedule from explicit betas (a 1-D sequence in (0, 1)), e.g. the ones a checkpoint saved."""
        schedule = cls.__new__(cls)
        schedule._precompute(torch.as_tensor(betas, dtype=torch.float64).clone(), name)
        return schedule

    def _precompute(self, betas, name):
        if betas.dim() != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a 1-D sequence of length T >= 1; got shape {tuple(betas.shape)}")
        bad = ~((betas > 0) & (betas < 1))  # also catches NaN
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"every beta must lie in the open interval (0, 1); got betas[{i}] = {betas[i].item()}")
        self.name, self.T = name, len(betas)
        self.betas = betas                                                  # beta_t
        self.alphas = 1 - betas                                             # alpha_t = 1 - beta_t
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)                 # alpha_bar_t = prod_{s<=t} alpha_s
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])    # alpha_bar_{t-1}, alpha_bar_0 = 1
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()               # sqrt(alpha_bar_t)
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()  # sqrt(1 - alpha_bar_t)
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I), Eqs. 6-7.
        self.posterior_variance = (betas * (1 - self.alphas_cumprod_prev)
                                   / (1 - self.alphas_cumprod))             # beta_tilde_t, Eq. 7
        # beta_tilde is 0 at t = 0 (given x_0, the step to x_0 is certain) and log 0 = -inf; like
        # improved-diffusion, use the value at t = 1 there instead (beta at t = 0 when T = 1).
        first = self.posterior_variance[1:2] if self.T > 1 else betas
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = (betas * self.alphas_cumprod_prev.sqrt()
                                     / (1 - self.alphas_cumprod))           # x_0's coefficient in mu_tilde_t, Eq. 7
        self.posterior_mean_coef2 = ((1 - self.alphas_cumprod_prev) * self.alphas.sqrt()
                                     / (1 - self.alphas_cumprod))           # x_t's coefficient in mu_tilde_t, Eq. 7
        self.snr = self.alphas_cumprod / (1 - self.alphas_cumprod)          # SNR_t = alpha_bar_t / (1 - alpha_bar_t)

    def __repr__(self):
        return f"Schedule({self.name!r}, T={self.T})"

    def _at(self, table, t, x):
        """table[t] shaped (B, 1, ..., 1) to broadcast against x of shape (B, ...), in x's dtype and device."""
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            bad = int(t[(t < 0) | (t >= self.T)][0])
            raise ValueError(f"timestep t = {bad} is out of range; code timesteps run from 0 to {self.T - 1}")
        # Cast on the CPU before moving: some accelerators (Apple's MPS) have no float64.
        return table[t.cpu()].to(x.dtype).to(x.device).view(-1, *[1] * (x.dim() - 1))

    # --- the forward process q ------------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Eq. 4, written as Eq. 9's
        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. x0, noise: (B, ...); t: long (B,)."""
        # BEGIN EXERCISE 4: the forward process q(x_t | x_0)
        # HINT: Eq. 9; self._at(table, t, x0) is table[t], shaped to broadcast against x0
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)
        # END EXERCISE

    def q_posterior(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), Eqs. 6-7. Returns (mean (B, ...),
        variance (B, 1, ..., 1), log_variance (B, 1, ..., 1), clipped as in posterior_log_variance_clipped)."""
        # BEGIN EXERCISE 5: the posterior q(x_{t-1} | x_t, x_0)
        # HINT: Eq. 7, with the posterior_* tables; self._at(table, t, x_t) is table[t], shaped like x_t
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped, t, x_t)
        # END EXERCISE

    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): Eq. 15, i.e. Eq. 9 solved for x_0."""
        return ((x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps)
                / self._at(self.sqrt_alphas_cumprod, t, x_t))

    # --- the reverse process: DDPM (Ho et al. 2020, Algorithm 2) ---------------------------------------

    @torch.no_grad()
    def p_sample(self, model, x_t, t, *, generator=None, clip_x0=True, variance="beta"):
        """One step of Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z. Returns (x_{t-1}, x_0_hat).

        model(x_t, t) -> eps predicts the noise; x_t: (B, ...); t: long (B,). variance picks sigma_t^2:
        "beta" (beta_t) or "beta_tilde" (beta_tilde_t, Eq. 7), the two choices of Section 3.2.
        We compute mu_theta as "predict x_0 (Eq. 15), then take the posterior mean (Eq. 7)". Without clipping
        this is exactly Eq. 11, mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t); the
        detour through x_0 is what lets us clip.
        """
        if variance not in ("beta", "beta_tilde"):
            raise ValueError(f"variance must be 'beta' or 'beta_tilde'; got {variance!r}")
        # BEGIN EXERCISE 6: one step of DDPM sampling, Algorithm 2
        # HINT: x_0_hat by Eq. 15 (clamped if clip_x0), mean by q_posterior, + sigma_t z (z from generator) if t > 0
        x0 = self.predict_x0_from_eps(x_t, t, model(x_t, t))
        if clip_x0:
            # Not in Algorithm 2 (the authors' released code does it). At large t, Eq. 15 divides by a tiny
            # sqrt(alpha_bar_t) (0.006 at t = T-1, linear schedule), so a small error in eps becomes a huge
            # x_0_hat; the data lie in [-1, 1], so clamping there keeps an imperfect model from drifting
            # into saturated samples.
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        var = self._at(self.betas if variance == "beta" else self.posterior_variance, t, x_t)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        not_last = (t > 0).view(-1, *[1] * (x_t.dim() - 1))  # Algorithm 2: z = 0 at the last step (paper t = 1)
        return mean + not_last * var.sqrt() * z, x0
        # END EXERCISE

    @torch.no_grad()
    def p_sample_loop(self, model, shape, *, generator=None, device="cpu", dtype=torch.float32,
                      clip_x0=True, variance="beta", record=()):
        """Algorithm 2 in full: x_T ~ N(0, I), then T steps down to x_0. shape: (B, ...) of the samples.

        Returns (x_0 samples of `shape`, trajectory): for each code t in `record`, in sampling order (from
        T-1 down), a tuple (t, x_t, x_0_hat predicted from x_t), tensors on the CPU.
        All randomness, x_T included, comes from `generator` (which must live on `device`).
        """
        record = self._check_record(record)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # x_T ~ N(0, I)
        trajectory = []
        for i in reversed(range(self.T)):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            x_prev, x0 = self.p_sample(model, x, t, generator=generator, clip_x0=clip_x0, variance=variance)
            if i in record:
                trajectory.append((i, x.cpu(), x0.cpu()))
            x = x_prev
        return x, trajectory

    def _check_record(self, record):
        bad = [t for t in record if not 0 <= t < self.T]
        if bad:
            raise ValueError(f"record holds timestep {bad[0]}, out of range; "
                             f"code timesteps run from 0 to {self.T - 1}")
        return set(record)

    # --- the reverse process: DDIM (Song et al. 2021) --------------------------------------------------

    def ddim_timesteps(self, steps):
        """The `steps` code timesteps DDIM visits, from T-1 down: t_k = floor(k T / steps) - 1, k = steps..1.

        This "trailing" spacing (Lin et al. 2024) starts at t = T-1, the step whose x_t the forward process
        really brings close to N(0, I); starting lower would take pure noise for a less noisy x_t.
        With steps = T it is every timestep.
        """
        if not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"DDIM steps must be an integer from 1 to T = {self.T}; got {steps!r}")
        return [(k * self.T) // steps - 1 for k in range(steps, 0, -1)]

    @torch.no_grad()
    def ddim_step(self, model, x_t, t, t_prev, *, eta=0.0, generator=None, clip_x0=True):
        """One DDIM step from code timestep t to an earlier t_prev (long (B,) each; t_prev = -1 means x_0
        itself, alpha_bar = 1). Song et al. 2021, Eq. 12:
            x_prev = sqrt(alpha_bar_prev) x_0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z,
        with Eq. 16's
            sigma^2 = eta^2 (1 - alpha_bar_prev) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_prev).
        eta = 0 is deterministic; eta = 1 over consecutive steps is DDPM with sigma^2 = beta_tilde.
        Returns (x_prev, x_0_hat).
        """
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1]; got eta = {eta}")
        bad = (t_prev < -1) | (t_prev >= t)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"t_prev must lie in [-1, t - 1]; got t_prev = {int(t_prev[i])} for t = {int(t[i])}")
        # BEGIN EXERCISE 7: one DDIM step, Song et al. 2021
        # HINT: x_0_hat by Eq. 15 (if clip_x0: clamp it, rederive eps from it), then Eqs. 16 and 12
        eps = model(x_t, t)
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        alpha_bar = self._at(self.alphas_cumprod, t, x_t)
        if clip_x0:
            x0 = x0.clamp(-1, 1)  # not in the paper; see p_sample for why
            eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()  # the eps Eq. 9 pairs with this x_0_hat
        # alphas_cumprod_prev[s + 1] is alpha_bar at s, and 1 at s = -1
        alpha_bar_prev = self._at(self.alphas_cumprod_prev, t_prev + 1, x_t)
        var = eta ** 2 * (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)  # sigma^2, Eq. 16
        # clamp: rounding can leave -1e-17 where the exact value is 0 (the last step, at eta = 1)
        x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - var).clamp(min=0).sqrt() * eps  # Eq. 12
        if eta > 0:
            z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
            x_prev = x_prev + var.sqrt() * z
        return x_prev, x0
        # END EXERCISE

    @torch.no_grad()
    def ddim_sample_loop(self, model, shape, steps=50, eta=0.0, *, generator=None, device="cpu",
                         dtype=torch.float32, clip_x0=True, record=()):
        """DDIM sampling in `steps` steps over `ddim_timesteps(steps)`, from x_T ~ N(0, I) to x_0.

        The last step goes to alpha_bar_prev = 1, so it returns x_0_hat itself: no noise is left over.
        Returns (x_0 samples of `shape`, trajectory) as p_sample_loop does; only the timesteps in `record`
        that are among ddim_timesteps(steps) are recorded.
        """
        timesteps, record = self.ddim_timesteps(steps), self._check_record(record)
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # x_T ~ N(0, I)
        trajectory = []
        for i, i_prev in zip(timesteps, timesteps[1:] + [-1]):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            x_prev, x0 = self.ddim_step(model, x, t, torch.full_like(t, i_prev), eta=eta,
                                        generator=generator, clip_x0=clip_x0)
            if i in record:
                trajectory.append((i, x.cpu(), x0.cpu()))
            x = x_prev
        return x, trajectory


def classifier_free_guidance(model, y, scale, null_label):
    """Turn a class-conditional model(x_t, t, y) -> eps into a guided eps_fn(x_t, t) (Ho & Salimans 2022).

        eps = eps_uncond + scale * (eps_cond - eps_uncond)

    scale = 1 is the plain conditional model, scale = 0 the unconditional one, scale > 1 pushes samples
    towards their class. (Ho & Salimans write (1 + w) eps_cond - w eps_uncond: scale = 1 + w.)
    y: long (B,) labels; null_label: the label the model was trained with when the class was dropped.
    Both halves run as one batch of 2B: one model call per step.
    """
    def eps_fn(x_t, t):
        labels = torch.cat([y, torch.full_like(y, null_label)])
        eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), labels).chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)
    return eps_fn


# --- python schedule.py: the schedules side by side ------------------------------------------------------

def load_digit(mnist_dir):
    """The first training image of MNIST as a (28, 28) float64 array in [-1, 1]. The IDX header is
    16 bytes: the magic number 2051, then the count, rows and columns, 4-byte big-endian each."""
    from outputs import UserError
    path = os.path.join(mnist_dir, "train-images-idx3-ubyte.gz")
    try:
        with gzip.open(path) as f:
            raw = f.read(16 + 28 * 28)
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or cut short
        raise UserError(f"{path} cannot be read or decompressed ({e}); "
                        "replace it with a good copy") from None
    header = (2051).to_bytes(4, "big") + raw[4:8] + (28).to_bytes(4, "big") * 2
    if len(raw) < 16 + 28 * 28 or raw[:16] != header:
        raise UserError(f"{path} is not MNIST's training images (an IDX file of 28x28 images); "
                        "replace it with a good copy")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(28, 28) / 127.5 - 1


def draw_digit():
    """A '3' rendered by matplotlib as a (28, 28) float64 array in [-1, 1], when no MNIST is at hand."""
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1), dpi=28, facecolor="black")
    fig.text(0.5, 0.45, "3", color="white", fontsize=58, ha="center", va="center", fontweight="bold")
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., 0] / 127.5 - 1
    plt.close(fig)
    return image


def main(argv=None):
    import matplotlib.pyplot as plt
    from outputs import UserError, arg_parser, check_writable, save_figure

    parser = arg_parser(description="Compare the noise schedules: alpha_bar_t, log SNR_t, and "
                                     "one digit noised at the same t under each.")
    parser.add_argument("--T", type=int, default=1000, help="number of diffusion steps (default 1000)")
    parser.add_argument("--out", default="runs/schedules.png", help="the PNG to write (default runs/schedules.png)")
    parser.add_argument("--mnist-dir", help="folder with train-images-idx3-ubyte.gz (default $MNIST_DIR; "
                        "without either, a drawn '3' stands in)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise added to the digit (default 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.T <= MAX_T:  # before the tables are allocated: T = 10^8 would fill the memory
        raise UserError(f"--T must be in 1..{MAX_T}; got {args.T}")
    if not args.out.lower().endswith(".png"):  # savefig picks the format from the name, or fails
        raise UserError(f"--out {args.out}: the figure is a PNG; give a file name ending in .png")
    check_writable(os.path.dirname(args.out) or ".")
    mnist_dir = args.mnist_dir or os.environ.get("MNIST_DIR")
    if mnist_dir and os.path.exists(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz")):
        x0, source = torch.from_numpy(load_digit(mnist_dir)), "MNIST train[0]"
    elif args.mnist_dir:
        raise UserError(f"no train-images-idx3-ubyte.gz in --mnist-dir {args.mnist_dir}; "
                        "point it at the folder holding MNIST's .gz files")
    else:
        x0, source = torch.from_numpy(draw_digit()), "a drawn '3' (no MNIST found)"

    schedules = [Schedule(name, args.T) for name in SCHEDULES]
    shown = sorted({min(round(f * args.T), args.T - 1) for f in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)})
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)

    fig = plt.figure(figsize=(2 + 1.3 * len(shown), 4 + 1.4 * len(schedules)))
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1.4 * len(schedules)], hspace=0.3)
    top = grid[0].subgridspec(1, 2, wspace=0.25)
    ax_ab, ax_snr = fig.add_subplot(top[0]), fig.add_subplot(top[1])
    t_axis = np.arange(args.T)
    for s in schedules:
        ax_ab.plot(t_axis, s.alphas_cumprod.numpy(), label=s.name)
        ax_snr.plot(t_axis, s.snr.log().numpy(), label=s.name)
        print(f"{s.name:>9}: alpha_bar at t = 0: {s.alphas_cumprod[0]:.6f}, at t = T-1: {s.alphas_cumprod[-1]:.3g};"
              f" log SNR from {s.snr[0].log():.2f} to {s.snr[-1].log():.2f}")
    ax_ab.set(title="signal kept: $\\bar\\alpha_t$", xlabel=f"timestep t (code index 0..{args.T - 1})",
              ylabel="$\\bar\\alpha_t$")
    ax_snr.set(title="log SNR$_t$ = log $\\bar\\alpha_t / (1 - \\bar\\alpha_t)$",
               xlabel=f"timestep t (code index 0..{args.T - 1})", ylabel="log SNR")
    for ax in (ax_ab, ax_snr):
        ax.legend()
        ax.grid(alpha=0.3)

    images = grid[1].subgridspec(len(schedules), len(shown), wspace=0.05, hspace=0.25)
    for row, s in enumerate(schedules):
        x_t = s.q_sample(x0[None].expand(len(shown), -1, -1), torch.tensor(shown), noise.expand(len(shown), -1, -1))
        for col, t in enumerate(shown):
            ax = fig.add_subplot(images[row, col])
            ax.imshow(x_t[col].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"t = {t}", fontsize=9)
            if col == 0:
                ax.set_ylabel(s.name)
    fig.suptitle(f"Noise schedules, T = {args.T}; bottom: {source} noised by q(x_t | x_0), Eq. 4, "
                 "with the same noise in every panel", y=0.955)
    save_figure(fig, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    from outputs import run_main
    run_main(main)
