"""The baseline for Part 2: a small DCGAN on the same digits, for the same wall-clock as the DDPM.

    python gan_baseline.py           # train 10 minutes (as long as part2_diffusion.py), then sample
    python gan_baseline.py --minutes 2 --n 1000 --seed 1
    python experiments.py gan        # the DDPM against this GAN, three seeds, in one table

A GAN (Goodfellow et al. 2014) trains two networks against each other. The generator G maps noise
z ~ N(0, I) to an image in ONE forward pass; the discriminator D scores how real an image looks. D
learns to tell real digits from G's, G learns to fool D; at the game's equilibrium G's images follow
the data. A DCGAN (Radford, Metz and Chintala 2015) is the convolutional recipe that first made this
game train reliably on images: (transposed) convolutions with stride 2 instead of pooling or dense
layers, BatchNorm in G, ReLU in G and LeakyReLU(0.2) in D, tanh for the output image, N(0, 0.02)
initial weights, and Adam with beta1 = 0.5. We keep all of it at MNIST's 28 x 28, small enough for a
laptop's CPU, with a larger learning rate (measured below).

Why it is the baseline: it is what generated images before diffusion models, and it makes the
opposite trade. Sampling is one network evaluation per image (the DDPM needs T = 1000, or 50 with
DDIM), but there is no loss that says how good the images are: the two losses only say who is
winning the game, which may oscillate, diverge, or settle on a few kinds of digit (mode collapse).
experiments.py gan measures both.

Everything a run writes goes to runs/<name>/: checkpoint.pt, samples.png, samples.npy, loss.png,
config.json and summary.json. Images are in [-1, 1], as in data.py and part2_diffusion.py.
"""
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import flags
import metrics
import plots
import runs
from outputs import HelpFormatter, UserError, arg_parser, finite_float, run_main, \
    save_figure, save_json

# Defaults, chosen by measurement (FID of 1000 samples, mean of seeds 0-2, same number of steps).
# WIDTH 32 runs ~10 steps/s at batch 64 on one CPU thread, a 64-wide D ~5, both 64-wide ~3.5: in
# 10 minutes the small pair gets ~6000 steps and FID 46, a 64-wide D its ~3000 steps and FID 60.
# lr 5e-4 beat the DCGAN paper's 2e-4 at every step count from 500 to 8000 (FID 46 against 68 at
# 6000), with every class present in every run.
Z_DIM = 64
WIDTH = 32       # channels of D's first layer and G's last hidden layer; the others have 2 * WIDTH
BATCH_SIZE = 64
LR = 5e-4        # Adam with the DCGAN paper's betas; its lr, 2e-4, learns slower on this budget
BETAS = (0.5, 0.999)
STEPS = 100_000  # on a CPU, --minutes stops training first
MINUTES = 10.0   # the DDPM's default budget
N_SAMPLES = 64


def generator(z_dim=Z_DIM, width=WIDTH):
    """G: z (B, z_dim) -> image (B, 1, 28, 28) in [-1, 1].
    Project to 7 x 7, then double twice: 14, 28."""
    return nn.Sequential(
        nn.Linear(z_dim, 2 * width * 7 * 7), nn.Unflatten(1, (2 * width, 7, 7)),
        nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),   # 7 -> 14
        nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),           # 14 -> 28
        nn.Tanh())                                                      # the data's range, [-1, 1]


def discriminator(width=WIDTH):
    """D: image (B, 1, 28, 28) -> logit (B,), large for 'real'.
    Strided convolutions halve 28 -> 14 -> 7. No BatchNorm: D sees real and fake batches separately,
    and batch statistics would tell them apart."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),             # 28 -> 14
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),     # 14 -> 7
        nn.Flatten(), nn.Linear(2 * width * 7 * 7, 1), nn.Flatten(0))


def dcgan_init(module):
    """The DCGAN paper's initialisation:
    every weight ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def get_args(argv=None):
    p = arg_parser(
        description="Train a DCGAN (Radford et al. 2015) on MNIST, the baseline for Part 2's DDPM.",
        formatter_class=HelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="where MNIST is looked for (see data.py); if it is missing, synthetic "
                   "digits are used instead, with a warning, as in part2_diffusion.py")
    p.add_argument("--steps", type=int, default=STEPS,
                   help="total steps (one D and one G update each)")
    p.add_argument("--minutes", type=finite_float, default=MINUTES,
                   help="stop training after this many minutes (the DDPM's default budget)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="real and fake images per step")
    p.add_argument("--n", type=int, default=N_SAMPLES,
                   help="how many images to draw after training")
    flags.run_group(p, "gan", seed_help="seed for weights, batches, z and samples")
    return p.parse_args(argv)


def check_args(args):
    for flag in ("steps", "batch_size", "n"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, "
                            f"got {getattr(args, flag)}")
    flags.check_budget(args)
    flags.check_memory("--batch-size", args.batch_size, flags.TRAIN_BYTES / 10, "training batch")
    flags.check_memory("--n", args.n, flags.SAMPLE_BYTES, "samples")


def discriminator_step(D, opt_d, x, x_fake, real, fake):
    """One Adam step on D, with a batch of real digits x and one of G's images x_fake.
    Returns D's loss (a float)."""
    # D maximises log D(x) + log(1 - D(G(z))) (Goodfellow et al. 2014, Eq. 1): binary cross-entropy
    # on the logits, with real = 1 and fake = 0. detach(): this step must not move G.
    d_loss = F.binary_cross_entropy_with_logits(D(x), real) + \
        F.binary_cross_entropy_with_logits(D(x_fake.detach()), fake)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return d_loss.item()


def generator_step(D, opt_g, x_fake, real):
    """One Adam step on G, through D's score of G's images x_fake. Returns G's loss (a float)."""
    # G maximises log D(G(z)) rather than minimising log(1 - D(G(z))): the same fixed point, but
    # strong gradients early on, when D rejects G's images easily (the "non-saturating" loss, ibid.
    # section 3).
    g_loss = F.binary_cross_entropy_with_logits(D(x_fake), real)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return g_loss.item()


def train(args, run_dir, device, overwrite=False):
    """Alternate one D step and one G step on fresh batches until --steps, --minutes, Ctrl-C or
    SIGTERM (runs.Run: the checkpoint is saved on the way out).

    Returns (the runs.Run, which holds the losses {"d": [...], "g": [...]} and the step reached,
    and G, in eval mode: BatchNorm uses its running statistics)."""
    torch.manual_seed(args.seed)
    images, _, used = data.load("mnist", args.data_dir, train=True, fallback=True)
    if images.shape[1:] != (1, 28, 28):
        raise UserError(f"the DCGAN draws 1 x 28 x 28 images; {used} has {tuple(images.shape[1:])}")
    meta = dict(dataset=used, z_dim=Z_DIM, width=WIDTH, batch_size=args.batch_size, lr=LR,
                betas=BETAS, seed=args.seed, steps=args.steps, minutes=args.minutes)
    if overwrite:  # as in Part 2: the earlier run's files go only now, just before the first write
        runs.clear_old_run(run_dir)
    save_json(run_dir / "config.json", meta)
    G, D = generator().to(device), discriminator().to(device)
    G.apply(dcgan_init)
    D.apply(dcgan_init)
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=BETAS)
    images = images.to(device)
    real = torch.ones(args.batch_size, device=device)
    fake = torch.zeros(args.batch_size, device=device)
    nets = dict(generator=G, discriminator=D, opt_g=opt_g, opt_d=opt_d)
    with runs.Run(run_dir, args, meta, nets, advice="the weights diverged; try another --seed",
                  history={"d": [], "g": []}) as run:
        while run.goes_on():
            x = images[torch.randint(0, len(images), (args.batch_size,), device=device)]
            x_fake = G(torch.randn(args.batch_size, Z_DIM, device=device))
            run.step_done({"d": discriminator_step(D, opt_d, x, x_fake, real, fake),
                           "g": generator_step(D, opt_g, x_fake, real)})
    return run, G.eval()


@torch.no_grad()
def sample(G, n, seed, device):
    """n images (n, 1, 28, 28) in [-1, 1] from z ~ N(0, I), one forward pass each.
    Returns (images, seconds)."""
    gen = torch.Generator(device).manual_seed(seed)
    start, chunks = time.time(), []
    for i in range(0, n, 256):
        z = torch.randn(min(256, n - i), Z_DIM, generator=gen, device=device)
        chunks.append(G(z).cpu())
    return torch.cat(chunks), time.time() - start


def loss_figure(history, path):
    """D's and G's losses against the step, each with a running mean;
    dotted: their values at equilibrium."""
    import matplotlib.pyplot as plt  # here, after plots.py has chosen the file-only backend
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(history["d"]) + 1)
    for key, label, eq, colour in [("d", "D", 2 * np.log(2), "C0"), ("g", "G", np.log(2), "C1")]:
        ax.plot(steps, history[key], lw=0.5, alpha=0.3, color=colour)
        ends, means, k = plots.running_mean(history[key])
        ax.plot(ends, means, color=colour, label=f"{label} loss (mean of {k} steps)")
        ax.axhline(eq, ls=":", color=colour, lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("binary cross-entropy (nats)")
    ax.set_title("DCGAN losses (dotted: D = 2 log 2, G = log 2, where D cannot tell)")
    ax.legend()
    save_figure(fig, path)


def run(args):
    """Train, then sample and score. Returns the summary (what summary.json holds), or None if
    Ctrl-C or SIGTERM stopped training. Other scripts call it with outputs.settings(get_args,
    **flags) for args."""
    check_args(args)
    device = flags.pick_device(args.device)
    out, (run, G) = runs.train_in_folder(
        args, "gan", lambda out, overwrite: train(args, out, device, overwrite), loss_figure)
    if run.stopped:
        return None
    samples, seconds = sample(G, args.n, args.seed, device)
    summary = dict(run.trained(), dataset=run.meta["dataset"], n=args.n, seed=args.seed,
                   sampling_steps=1, sampling_seconds=round(seconds, 2),
                   final_d_loss=round(float(np.mean(run.history["d"][-100:])), 4),
                   final_g_loss=round(float(np.mean(run.history["g"][-100:])), 4),
                   metrics=metrics.score_if_cached(samples, run.meta["dataset"], args.data_dir))
    title = f"{min(args.n, 256)} DCGAN samples ({run.meta['dataset']}, step {run.step})"
    return runs.write_samples(out, samples, summary, title, args.data_dir, grid=samples[:256])


def main(argv=None):
    return run(get_args(argv))


if __name__ == "__main__":
    run_main(main)
