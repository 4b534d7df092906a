"""The figures of Part 2: sample grids, the denoising trajectory, the forward noising, the loss curve.

Images arrive as tensors (N, C, H, W) in [-1, 1], the range the model works in; they are mapped to [0, 1]
only here, for display. Every figure is saved as PNG through outputs.save_figure (atomically).
"""
import matplotlib

matplotlib.use("Agg")  # figures go to files; no window is ever opened
import matplotlib.pyplot as plt
import numpy as np
import torch

from outputs import save_figure


def to_image(x):
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, C) numpy in [0, 1], for imshow."""
    x = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def tile(images, ncols):
    """(N, C, H, W) -> one image holding them in a grid of ncols columns, 2 pixels apart."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    grid = torch.ones(c, nrows * (h + 2) - 2, ncols * (w + 2) - 2)  # white gaps after mapping to [0, 1]
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
    """Reverse process: for a few samples, x_t (top) and the predicted x_0 (bottom) as t goes T-1 -> 0.

    steps: list of (t, x_t (B, C, H, W), x0_pred (B, C, H, W)) in sampling order.
    """
    fig, axes = plt.subplots(2, len(steps), figsize=(1.6 * len(steps), 1.6 * n_rows + 1), squeeze=False)
    for j, (t, x_t, x0) in enumerate(steps):
        for i, (what, x) in enumerate([("x_t", x_t), ("predicted x_0", x0)]):
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
    """Forward process q(x_t | x_0) (Eq. 4) for a few real images x0 (B, C, H, W), at eight t from 0 to T-1."""
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


def loss_curve(history, path):
    """The training loss of every step, and a running mean to see the trend through the noise."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(history) + 1)
    ax.plot(steps, history, lw=0.5, alpha=0.4, label="per step")
    k = min(100, max(1, len(history) // 10))
    if len(history) >= k:
        ax.plot(steps[k - 1:], np.convolve(history, np.ones(k) / k, mode="valid"), label=f"mean of {k} steps")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE between eps and eps_theta (log scale)")
    ax.set_title("Training loss (Algorithm 1)")
    ax.legend()
    save_figure(fig, path)
