"""The figures of Part 2: sample grids, the denoising trajectory, the forward noising, the loss
curve, and the noise schedules side by side.

Images arrive as tensors (N, C, H, W) in [-1, 1], the range the model works in; they are mapped to
[0, 1] only here, for display. Every figure is saved as PNG through outputs.save_figure
(atomically).

    python plots.py schedules                 # the schedules compared -> runs/schedules.png
    python plots.py schedules --data-dir data/mnist --T 1000 --seed 0 --out runs/schedules.png

The schedules figure: alpha_bar_t and log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)) against t for
each schedule (top), and one digit (the first MNIST training image, read through data.py from
--data-dir; without MNIST, data.py's synthetic digits stand in, with a warning) noised by
q(x_t | x_0) at seven t, with the same noise under every schedule, so only the schedule differs
(bottom). The command also prints alpha_bar at t = 0 and T-1 and the log SNR range.
"""
import os

import matplotlib

matplotlib.use("Agg")  # figures go to files; no window is ever opened
import matplotlib.pyplot as plt
import numpy as np
import torch

import data
from outputs import UserError, arg_parser, check_writable, run_main, save_figure, seed
from schedule import MAX_T, SCHEDULES, Schedule


def to_image(x):
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, C) numpy in [0, 1], for imshow."""
    x = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def tile(images, ncols):
    """(N, C, H, W) -> one image holding them in a grid of ncols columns, 2 pixels apart."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    # ones: white gaps after mapping to [0, 1]
    grid = torch.ones(c, nrows * (h + 2) - 2, ncols * (w + 2) - 2)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        grid[:, r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = img
    return grid


def sample_grid(samples, path, title):
    """A square-ish grid of samples (N, C, H, W)."""
    ncols = int(np.ceil(np.sqrt(len(samples))))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(to_image(tile(samples, ncols)), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    save_figure(fig, path)


def trajectory(steps, path, n_rows=4):
    """Reverse process: for a few samples, x_t (top) and the predicted x_0 (bottom) as t goes
    T-1 -> 0.

    steps: list of (t, x_t (B, C, H, W), x0_hat (B, C, H, W)) in sampling order.
    """
    fig, axes = plt.subplots(2, len(steps), figsize=(1.6 * len(steps), 1.6 * n_rows + 1),
                             squeeze=False)
    for j, (t, x_t, x0_hat) in enumerate(steps):
        for i, (what, x) in enumerate([("x_t", x_t), ("predicted x_0", x0_hat)]):
            ax = axes[i, j]
            ax.imshow(to_image(tile(x[:n_rows], 1)), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t = {t}")
            if j == 0:
                ax.set_ylabel(what)
    fig.suptitle("Denoising: noisy x_t (top) and the model's guess of x_0 (bottom)")
    save_figure(fig, path)


def forward_noising(sched, x0, path, n_cols=8):
    """Forward process q(x_t | x_0) (Eq. 4) for a few real images x0 (B, C, H, W), at eight t from
    0 to T-1."""
    ts = np.linspace(0, sched.T - 1, n_cols).round().astype(int)
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=gen)
    fig, axes = plt.subplots(1, n_cols, figsize=(1.6 * n_cols, 1.6 * len(x0) + 0.8), squeeze=False)
    for j, t in enumerate(ts):
        x_t = sched.q_sample(x0.cpu(), torch.full((len(x0),), int(t)), eps)
        ax = axes[0, j]
        ax.imshow(to_image(tile(x_t, 1)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"t = {t}\nalpha_bar={float(sched.alphas_cumprod[t]):.3f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"Forward process q(x_t | x_0), {sched.name} schedule, T = {sched.T}")
    save_figure(fig, path)


def running_mean(values):
    """The mean of each window of k consecutive values, k = a tenth of them (1 to 100): short runs
    get short windows. Returns (the step at each window's end, the means, k)."""
    k = min(100, max(1, len(values) // 10))
    means = np.convolve(values, np.ones(k) / k, mode="valid")
    return np.arange(k, len(values) + 1), means, k


def loss_curve(history, path):
    """The training loss of every step, and a running mean to see the trend through the noise."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(history) + 1), history, lw=0.5, alpha=0.4, label="per step")
    if history:
        steps, means, k = running_mean(history)
        ax.plot(steps, means, label=f"mean of {k} steps")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE between eps and eps_theta (log scale)")
    ax.set_title("Training loss (Algorithm 1)")
    ax.legend()
    save_figure(fig, path)


# --- python plots.py schedules: the schedules side by side ------------------------------------

def schedules_figure(x0, path, T=1000, seed=0, source="MNIST train[0]"):
    """The schedules figure (see the top of this file) for the digit x0 (28, 28) in [-1, 1], saved
    to `path`; `source` names the digit in the title. Prints each schedule's ends."""
    scheds = [Schedule(name, T) for name in SCHEDULES]
    shown = sorted({min(round(f * T), T - 1) for f in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)})
    fig = plt.figure(figsize=(2 + 1.3 * len(shown), 4 + 1.4 * len(scheds)))
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1.4 * len(scheds)], hspace=0.3)
    schedule_curves(fig, grid[0], scheds)
    noised_digits(fig, grid[1], scheds, x0, shown, seed)
    fig.suptitle(f"Noise schedules, T = {T}; bottom: {source} noised by q(x_t | x_0), Eq. 4, "
                 "with the same noise in every panel", y=0.955)
    save_figure(fig, path)


def schedule_curves(fig, cell, scheds):
    """alpha_bar_t (left) and log SNR_t (right) against t, one line per schedule, in the gridspec
    cell `cell`; prints alpha_bar at both ends and the log SNR range."""
    top = cell.subgridspec(1, 2, wspace=0.25)
    ax_ab, ax_snr = fig.add_subplot(top[0]), fig.add_subplot(top[1])
    for sched in scheds:
        ax_ab.plot(np.arange(sched.T), sched.alphas_cumprod.numpy(), label=sched.name)
        ax_snr.plot(np.arange(sched.T), sched.snr.log().numpy(), label=sched.name)
        print(f"{sched.name:>9}: alpha_bar at t = 0: {sched.alphas_cumprod[0]:.6f}, "
              f"at t = T-1: {sched.alphas_cumprod[-1]:.3g}; "
              f"log SNR from {sched.snr[0].log():.2f} to {sched.snr[-1].log():.2f}")
    xlabel = f"timestep t (code index 0..{scheds[0].T - 1})"
    ax_ab.set(title="signal kept: $\\bar\\alpha_t$", xlabel=xlabel, ylabel="$\\bar\\alpha_t$")
    ax_snr.set(title="log SNR$_t$ = log $\\bar\\alpha_t / (1 - \\bar\\alpha_t)$", xlabel=xlabel,
               ylabel="log SNR")
    for ax in (ax_ab, ax_snr):
        ax.legend()
        ax.grid(alpha=0.3)


def noised_digits(fig, cell, scheds, x0, shown, seed):
    """x0 noised by q(x_t | x_0) at each t in `shown` (columns) under each schedule (rows), with
    the same noise everywhere (drawn from `seed`), so only the schedule differs."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    images = cell.subgridspec(len(scheds), len(shown), wspace=0.05, hspace=0.25)
    n = len(shown)
    for row, sched in enumerate(scheds):
        x_t = sched.q_sample(x0[None].expand(n, -1, -1), torch.tensor(shown),
                             noise.expand(n, -1, -1))
        for col, t in enumerate(shown):
            ax = fig.add_subplot(images[row, col])
            ax.imshow(x_t[col].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"t = {t}", fontsize=9)
            if col == 0:
                ax.set_ylabel(sched.name)


def get_args(argv=None):
    p = arg_parser(description="Draw a figure of Part 2. schedules: compare the noise schedules "
                               "(alpha_bar_t, log SNR_t, and one digit noised at the same t under "
                               "each).")
    p.add_argument("figure", choices=["schedules"], help="which figure to draw")
    p.add_argument("--data-dir", default="data", help="where MNIST is looked for (see data.py); "
                   "if it is missing, synthetic digits are used instead, with a warning, as in "
                   "part2_diffusion.py")
    p.add_argument("--T", type=int, default=1000, help="number of diffusion steps (default 1000)")
    p.add_argument("--out", default="runs/schedules.png",
                   help="the PNG to write (default runs/schedules.png)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the noise added to the digit (default 0)")
    args = p.parse_args(argv)
    if not 1 <= args.T <= MAX_T:  # before the tables are allocated: T = 10^8 would fill the memory
        raise UserError(f"--T must be in 1..{MAX_T}; got {args.T}")
    if not args.out.lower().endswith(".png"):  # savefig picks the format from the name, or fails
        raise UserError(f"--out {args.out}: the figure is a PNG; give a file name ending in .png")
    return args


def main(argv=None):
    args = get_args(argv)
    check_writable(os.path.dirname(args.out) or ".")
    images, _, used = data.load("mnist", args.data_dir, train=True, fallback=True)
    source = "MNIST train[0]" if used == "mnist" else "a synthetic digit (no MNIST found)"
    schedules_figure(images[0, 0].double(), args.out, args.T, args.seed, source)
    print(f"saved {args.out}")


if __name__ == "__main__":
    run_main(main)


def image_table(cells, rows, columns, path, title):
    """A figure of image rows: cells[r][c], (k, 1, 28, 28) in [-1, 1], side by side in row r
    (named rows[r]) and column c (named columns[c]). Part 3's prompts.png and experiments.py use
    it."""
    k = max(len(images) for row in cells for images in row)
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, layout="constrained",
                             figsize=(0.75 * k * len(columns) + 2.5, 0.8 * len(rows) + 0.8))
    for r, row in enumerate(cells):
        for c, images in enumerate(row):
            ax = axes[r, c]
            ax.imshow(to_image(tile(images, len(images))), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(rows[r], rotation=0, ha="right", va="center", fontsize=9)
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
    fig.suptitle(title)
    save_figure(fig, path)
