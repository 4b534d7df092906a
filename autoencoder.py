"""Part 3, the latent space: a small autoencoder that Stable Diffusion's trick needs.

    python autoencoder.py              # train it (or load the cached one) and show reconstructions
    python autoencoder.py --minutes 3  # ... training for at most 3 minutes

Stable Diffusion does not diffuse pixels. An autoencoder, trained once, squeezes each image into a
latent a few times smaller, and the diffusion model of Part 2 learns and samples those latents
instead; the decoder turns a sampled latent back into an image (Rombach et al. 2022, "latent
diffusion"). Fewer numbers per image means a cheaper U-Net at every one of the sampler's steps.

Ours maps a 28 x 28 digit (784 numbers) to a latent z of 3 x 8 x 8 (192 numbers, 4.1 times fewer):

    x (B, 1, 28, 28) -pad-> 32 x 32 -conv, SiLU, stride-2 convs-> 16 x 16 -> 8 x 8
                     -> mean, log variance
    z = mean + std * noise  (B, 3, 8, 8)  -conv, SiLU, 2x upsampling-> 16 -> 32
                                          -crop-> x_hat (B, 1, 28, 28)

Like latent diffusion's autoencoder it is a small variational one: the encoder gives a Gaussian per
latent number and the loss adds KL_WEIGHT times its KL divergence from N(0, 1) to the reconstruction
error. The weight is small, so reconstructions stay sharp, but it keeps the latent smooth (nearby
latents decode to similar digits) and its scale bounded, which the diffusion model needs: its noise
schedule assumes data of about unit scale. What is left of the scale is measured once after training
(the standard deviation of the latents of the training digits) and divided out, as Stable Diffusion
does with its constant 0.18215: `encode` returns latents with unit variance, `decode` takes them.

Trained once on MNIST's training digits and cached beside the data
(`<data-dir>/mnist-autoencoder.pt`), like metrics.py's classifier.

Next: unet.py's CrossAttention (how the U-Net reads a prompt), then part3_text_to_image.py, which
joins captions, latents and cross-attention into a text-to-image model.
"""
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import flags
from outputs import (Progress, UserError, arg_parser, check_output_file, check_space,
                     check_writable, finite_float, run_main, save_bytes, save_figure)

LATENT_CHANNELS = 3   # latent: (3, 8, 8)
WIDTH = 16            # channels of the first conv; 32 after the first halving
KL_WEIGHT = 1e-4      # per latent number, against the squared error per pixel
EPOCHS, BATCH_SIZE, LR, SEED = 2, 128, 2e-3, 0
CACHE_FILE = "mnist-autoencoder.pt"


class Autoencoder(nn.Module):
    """encode: (B, 1, 28, 28) in [-1, 1] -> z (B, 3, 8, 8), unit variance over the data.
    decode: z (B, 3, 8, 8) -> (B, 1, 28, 28).
    `scale` is set after training (see the module's doc)."""

    def __init__(self, width=WIDTH, latent=LATENT_CHANNELS):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),          # 32 -> 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),      # 16 -> 8
            nn.Conv2d(2 * w, 2 * latent, 3, padding=1))                      # mean and log variance
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2),                                     # 8 -> 16
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2),                                     # 16 -> 32
            nn.Conv2d(2 * w, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 1, 3, padding=1))
        # 1 / std of the latents, set by `fit_scale`
        self.register_buffer("scale", torch.tensor(1.0))

    def moments(self, x):
        """x (B, 1, 28, 28) -> mean and log variance of q(z | x),
        each (B, latent, 8, 8), unscaled."""
        mean, logvar = self.encoder(F.pad(x, (2, 2, 2, 2), value=-1.0)).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def encode(self, x, sample=False):
        """The latent the diffusion model sees: the mean (or a draw) of q(z | x), times `scale`."""
        mean, logvar = self.moments(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return z * self.scale

    def decode(self, z):
        """A scaled latent (B, latent, 8, 8) -> an image (B, 1, 28, 28), roughly in [-1, 1]."""
        return self.decoder(z / self.scale)[:, :, 2:-2, 2:-2]


def loss(model, x):
    """Reconstruction error per pixel + KL_WEIGHT * KL(q(z | x) || N(0, I)) per latent number."""
    mean, logvar = model.moments(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)   # the reparameterisation trick
    x_hat = model.decoder(z)[:, :, 2:-2, 2:-2]
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
    return F.mse_loss(x_hat, x) + KL_WEIGHT * kl


@torch.no_grad()
def fit_scale(model, images, batch=1000):
    """Set model.scale so that encoded `images` have unit standard deviation."""
    model.scale.fill_(1.0)
    z = torch.cat([model.encode(images[i:i + batch]) for i in range(0, len(images), batch)])
    model.scale.fill_(1.0 / z.std().item())


def train(images, epochs=EPOCHS, seed=SEED, log=print, minutes=None, show=True):
    """A new autoencoder trained on `images` (N, 1, 28, 28) in [-1, 1], with its scale fitted.
    minutes: a time budget; training stops when it is spent, even before the last epoch. show:
    draw a progress line on stderr."""
    torch.manual_seed(seed)
    model = Autoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps = epochs * math.ceil(len(images) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps)
    progress = Progress(steps, "autoencoder", seconds=None if minutes is None else 60 * minutes,
                        show=show)
    start = time.time()
    for epoch in range(epochs):
        order, total, seen = torch.randperm(len(images)), 0.0, 0
        for i in range(0, len(images), BATCH_SIZE):
            value = loss(model, images[order[i:i + BATCH_SIZE]])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            schedule.step()
            total += value.item() * len(order[i:i + BATCH_SIZE])
            seen += len(order[i:i + BATCH_SIZE])
            progress.tick(f"loss {value.item():.4f}")
            if progress.out_of_time():
                break
        progress.close()
        log(f"  autoencoder epoch {epoch + 1}/{epochs}: loss {total / seen:.4f} "
            f"({time.time() - start:.0f} s)")
        if progress.out_of_time():
            log(f"  stopped after {progress.done} of {steps} steps: the {minutes:g} minutes are "
                "spent (the figure shows what that gives)")
            break
    fit_scale(model.eval(), images)
    return model


def load_or_train(data_dir="data", log=print, minutes=None):
    """The cached autoencoder in data_dir, trained on MNIST's training digits first if it is
    missing (for at most `minutes`, if given)."""
    path = Path(data_dir) / CACHE_FILE
    if path.exists():
        model = Autoencoder()
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
        except Exception as e:  # a damaged or foreign file: say which, and how to get a good one
            raise UserError(f"{path} is not an autoencoder saved by autoencoder.py "
                            f"({type(e).__name__}); delete it to train a new one") from None
        return model.eval().requires_grad_(False)
    check_writable(path.parent, "--data-dir")  # the cache can be saved: checked before training
    check_space(path.parent, 2, "the autoencoder's cache")
    images, _, used = data.load("mnist", data_dir, train=True)
    log(f"no autoencoder at {path}: training one on the {len(images)} {used} training digits "
        f"({EPOCHS} epochs, seed {SEED})")
    model = train(images, log=log, minutes=minutes)
    save_bytes(path, lambda f: torch.save(model.state_dict(), f))  # a full disk: one line
    log(f"saved to {path}")
    return model.requires_grad_(False)


@torch.no_grad()
def reconstruction_error(model, images, batch=1000):
    """Mean squared error per pixel of decode(encode(x)) on `images`, in the [-1, 1] range."""
    errors = [F.mse_loss(model.decode(model.encode(x)), x, reduction="sum")
              for x in images.split(batch)]
    return float(sum(errors) / images.numel())


def main(argv=None):
    p = arg_parser(description="Train (or load) the autoencoder of Part 3 and show what it keeps "
                               "of a digit.")
    p.add_argument("--data-dir", default="data",
                   help="MNIST, and the cached autoencoder (default data)")
    p.add_argument("--out", default="runs/autoencoder.png", help="the figure (default %(default)s)")
    p.add_argument("--minutes", type=finite_float, metavar="M",
                   help="train for at most M minutes (default: the full "
                        f"{EPOCHS} epochs); a cached autoencoder is loaded, not trained")
    args = p.parse_args(argv)
    if args.minutes is not None:
        flags.check_budget(args)
    check_output_file(args.out)  # before minutes of training, not after
    model = load_or_train(args.data_dir, minutes=args.minutes)
    test, _, _ = data.load("mnist", args.data_dir, train=False)
    z = model.encode(test[:1000])
    print(f"latent {tuple(z.shape[1:])} = {z[0].numel()} numbers for {test[0].numel()} pixels; "
          f"latent std {z.std():.3f} (scale {model.scale.item():.4f}); "
          f"reconstruction MSE on the test digits {reconstruction_error(model, test):.4f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = torch.cat([test[:10], model.decode(z[:10]).clamp(-1, 1)])
    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for ax, img in zip(axes.flat, shown):
        ax.imshow((img[0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("test digit", fontsize=8)
    axes[1, 0].set_ylabel("decoded", fontsize=8)
    fig.suptitle(f"The autoencoder: 784 pixels -> a latent of {z[0].numel()} numbers -> 784 pixels")
    save_figure(fig, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
