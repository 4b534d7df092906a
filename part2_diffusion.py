"""Part 2: train a DDPM on MNIST and draw digits from pure noise.

    python part2_diffusion.py                      # train with the defaults, then sample; see runs/ddpm/
    python part2_diffusion.py --minutes 30         # train longer (better digits)
    python part2_diffusion.py --resume runs/ddpm   # continue a run from its checkpoint
    python part2_diffusion.py --sample-from runs/ddpm --sampler ddim --sampling-steps 50 --n 100

This file joins the pieces: data.py gives images in [-1, 1], unet.py the noise predictor eps_theta,
schedule.py the forward process q(x_t | x_0) and the samplers. What is left here is Algorithm 1 of
Ho et al. (2020), the training loop, and the housekeeping around it: checkpoints, figures, a summary.

Everything a run writes goes to runs/<name>/: checkpoint.pt, samples.png, samples.npy, trajectory.png,
forward.png, loss.png, config.json and summary.json.
"""
import argparse
import copy
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import metrics
import plots
from outputs import HelpFormatter, UserError, atomic_write, check_writable, run_main, save_json
from schedule import SCHEDULES, Schedule, classifier_free_guidance
from unet import PRESETS, UNet

# Defaults, chosen by measurement on a 2-core laptop CPU (see the README's "How long must I train?").
DATASET = "mnist"
SCHEDULE = "linear"
T = 1000
PRESET = "cpu"
BATCH_SIZE = 64
LR = 2e-3
WARMUP = 100          # steps of linear learning-rate warm-up: Adam's first steps are noisy
EMA_DECAY = 0.999
GRAD_CLIP = 1.0
STEPS = 20000        # on a CPU, --minutes stops training first; on a GPU, this does
MINUTES = 10.0       # 10 minutes of training + ~3 of DDPM sampling: under 15 on a 2-core CPU
SAMPLER = "ddpm"
N_SAMPLES = 64


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train a DDPM (Ho et al. 2020) on MNIST and sample digits from pure noise.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help=f"dataset to learn (default {DATASET}; if MNIST cannot be found or downloaded, "
                        "a built-in synthetic digits set is used instead, with a warning)")
    g.add_argument("--data-dir", default="data", help="where datasets are looked for and downloaded to")
    g = p.add_argument_group("model and noise schedule")
    g.add_argument("--preset", choices=sorted(PRESETS), default=PRESET, help="U-Net size (see unet.py)")
    g.add_argument("--schedule", choices=SCHEDULES, default=SCHEDULE, help="how beta_t grows with t")
    g.add_argument("--T", type=int, default=T, help="number of diffusion steps")
    g.add_argument("--conditional", action="store_true",
                   help="condition on the class label (enables --labels and --guidance when sampling)")
    g.add_argument("--p-uncond", type=float, default=0.1,
                   help="with --conditional: how often the label is dropped in training, "
                        "so one network also learns the unconditional eps (classifier-free guidance)")
    g = p.add_argument_group("training (Algorithm 1)")
    g.add_argument("--steps", type=int, default=STEPS, help="total optimiser steps to train for")
    g.add_argument("--minutes", type=float, default=MINUTES,
                   help="stop training after this many minutes, even if --steps is not reached")
    g.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per optimiser step")
    g.add_argument("--lr", type=float, default=LR, help="AdamW peak learning rate")
    g.add_argument("--ema", type=float, default=EMA_DECAY,
                   help="decay of the exponential moving average of the weights used for sampling")
    g.add_argument("--ckpt-every", type=int, default=500, help="save a checkpoint every this many steps")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR")
    g = p.add_argument_group("sampling (Algorithm 2, or DDIM)")
    g.add_argument("--sample-from", metavar="RUN_DIR", help="skip training: sample from RUN_DIR's checkpoint")
    g.add_argument("--sampler", choices=["ddpm", "ddim"], default=SAMPLER,
                   help="ddpm: all T stochastic steps; ddim: --sampling-steps deterministic steps")
    g.add_argument("--sampling-steps", type=int, default=50, help="DDIM steps (at most T)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 like DDPM")
    g.add_argument("--n", type=int, default=N_SAMPLES, help="how many images to draw")
    g.add_argument("--labels", type=int, nargs="+",
                   help="conditional models: class labels to draw, cycled over the --n images")
    g.add_argument("--guidance", type=float, default=None,
                   help="conditional models: guidance scale s (1 = plain conditional, >1 sharper)")
    g = p.add_argument_group("run")
    g.add_argument("--name", default=None, help="run folder name under --runs (default: ddpm, ddpm-2, ...)")
    g.add_argument("--runs", default="runs", help="folder that holds the run folders")
    g.add_argument("--overwrite", action="store_true", help="allow reusing an existing run folder")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, batches, noise and samples")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    return p.parse_args(argv)


def check_args(args):
    """Reject bad flags before any minute of training is spent."""
    for flag in ("n", "T", "steps", "batch_size", "sampling_steps", "ckpt_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.minutes <= 0 or args.lr <= 0:
        raise UserError("--minutes and --lr must be positive")
    if not 0 <= args.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {args.ema}")
    if args.sampler == "ddim" and args.sampling_steps > args.T:
        raise UserError(f"--sampling-steps {args.sampling_steps} exceeds T = {args.T}; use at most T")
    if args.resume and args.sample_from:
        raise UserError("--resume and --sample-from are exclusive: train more, or only sample")


def check_conditioning(args, conditional):
    """--labels and --guidance only mean something for a class-conditional model."""
    if not conditional and (args.labels or args.guidance is not None):
        raise UserError("--labels and --guidance need a model trained with --conditional; this one is not")
    if args.labels and not all(0 <= y < 10 for y in args.labels):
        raise UserError(f"--labels must lie in 0..9, got {args.labels}")


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {name} is not usable here ({str(e).splitlines()[0]}); try --device cpu")
    return device


def run_folder(args):
    """A fresh folder under --runs, never an earlier run's, unless --overwrite says so."""
    runs = Path(args.runs)
    if args.name is None:
        name, k = "ddpm", 1
        while (runs / name).exists():
            k += 1
            name = f"ddpm-{k}"
    else:
        name = args.name
        if (runs / name).exists() and any((runs / name).iterdir()) and not args.overwrite:
            raise UserError(f"{runs / name} already holds a run; pass --overwrite or choose another --name")
    return check_writable(runs / name, "--runs")


# --- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(path, state):
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir):
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give the folder of a run that trained at least once")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); it is damaged or not ours")
    missing = {"model_config", "schedule", "model", "ema", "step"} - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise UserError(f"{path} is not a part2_diffusion.py checkpoint (missing {sorted(missing)})")
    return ckpt


def for_sampling(ckpt):
    """A checkpoint cut down to what sampling needs: the EMA weights, the configuration, the step and the
    loss history; no optimiser state or RNG state, so it cannot be resumed. Its "model" entry is the EMA
    weights themselves (torch.save stores a shared tensor once), so it is a third of the full size."""
    return dict(meta=ckpt["meta"], model_config=ckpt["model_config"], schedule=ckpt["schedule"],
                model=ckpt["ema"], ema=ckpt["ema"], step=ckpt["step"], history=ckpt["history"])


def build_model(model_config, state_dict, path):
    model = UNet(**model_config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:
        raise UserError(f"the weights in {path} do not fit the model configuration stored with them")
    return model


# --- training (Algorithm 1) -------------------------------------------------------------------------

def setup(args, ckpt):
    """The data, the model and the run's metadata: fresh from the flags, or as stored in a checkpoint."""
    if ckpt is None:
        torch.manual_seed(args.seed)  # one seed for the weights, the batches, t and eps
        requested, fallback = args.dataset or DATASET, args.dataset is None
    else:
        meta = ckpt["meta"]
        requested, fallback = meta["requested"], meta["fallback"]
    images, labels, used = data.load(requested, args.data_dir, train=True, fallback=fallback)  # DataError is a UserError
    if ckpt is None:
        model_config = dict(PRESETS[args.preset], image_size=images.shape[-1], in_channels=images.shape[1],
                            num_classes=10 if args.conditional else None)
        meta = dict(dataset=used, requested=requested, fallback=fallback, model_config=model_config,
                    schedule=dict(name=args.schedule, T=args.T), conditional=args.conditional,
                    p_uncond=args.p_uncond, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema,
                    seed=args.seed)
        model = UNet(**model_config)
    else:
        if used != meta["dataset"]:
            raise UserError(f"the run trained on {meta['dataset']}, but {args.data_dir} now gives {used}")
        model = build_model(meta["model_config"], ckpt["model"], args.resume)
    return images, labels, model, meta


def training_loss(model, sched, x0, y=None):
    """Algorithm 1, lines 3-5, for a batch x0 (B, C, H, W): the simplified loss L_simple (Eq. 14).

    Returns the mean over the batch of ||eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t)||^2
    (per pixel), with one t ~ Uniform({1..T}) and one eps ~ N(0, I) drawn for each image.
    """
    # BEGIN EXERCISE 10: the training loss of Algorithm 1
    # HINT: t = torch.randint(0, sched.T, ...) (0-based), eps = torch.randn_like(x0), x_t by sched.q_sample, then MSE
    t = torch.randint(0, sched.T, (len(x0),), device=x0.device)  # t ~ Uniform({1..T}), 0-based here
    eps = torch.randn_like(x0)                                    # eps ~ N(0, I)
    x_t = sched.q_sample(x0, t, eps)                              # Eq. 4
    return F.mse_loss(model(x_t, t, y), eps)                      # Eq. 14
    # END EXERCISE


def train(args, run_dir, device, ckpt=None):
    """Algorithm 1: repeat { x_0 ~ data, t ~ Uniform, eps ~ N(0, I), step on ||eps - eps_theta(x_t, t)||^2 }.

    Returns the EMA model (used for sampling), the schedule, the run's metadata and the loss of every step.
    """
    images, labels, model, meta = setup(args, ckpt)
    sched = Schedule(meta["schedule"]["name"], meta["schedule"]["T"])
    model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=0.0)
    step, history = 0, []
    if ckpt is not None:
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        step, history = ckpt["step"], list(ckpt["history"])
    save_json(run_dir / "config.json", dict(meta, steps=args.steps, minutes=args.minutes))
    plots.forward_noising(sched, images[:4], run_dir / "forward.png")
    images, labels = images.to(device), labels.to(device)

    def save():
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never replace a good checkpoint
            raise UserError(f"the weights diverged by step {step}; try a lower --lr "
                            f"(the last good checkpoint is kept in {run_dir})")
        save_checkpoint(run_dir / "checkpoint.pt", dict(
            meta=meta, model_config=meta["model_config"], schedule=meta["schedule"], model=model.state_dict(),
            ema=ema.state_dict(), optimizer=opt.state_dict(), step=step, history=history,
            rng=torch.get_rng_state()))

    # Ctrl-C finishes the current step, saves a checkpoint and leaves, instead of losing the run.
    interrupted = []
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    start, first_step, smooth, last_print = time.time(), step, None, 0.0
    model.train()
    try:
        while step < args.steps and not interrupted and time.time() - start < 60 * args.minutes:
            idx = torch.randint(0, len(images), (meta["batch_size"],), device=device)  # x_0 ~ q(x_0)
            y = None
            if meta["conditional"]:  # drop the label sometimes, so the same net learns eps(x_t, t) too
                y = labels[idx].masked_fill(torch.rand(len(idx), device=device) < meta["p_uncond"], 10)
            loss = training_loss(model, sched, images[idx], y)
            if not torch.isfinite(loss):  # the weights are already bad: keep the last saved checkpoint
                raise UserError(f"the loss became {loss.item()} at step {step + 1}; try a lower --lr "
                                f"(the last good checkpoint is kept in {run_dir})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            for group in opt.param_groups:                              # linear warm-up, then constant
                group["lr"] = meta["lr"] * min(1.0, (step + 1) / WARMUP)
            opt.step()
            step += 1
            # The EMA gets a warm-up of its own, or for the first thousand steps it would remember the init.
            decay = min(meta["ema_decay"], (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            history.append(loss.item())
            smooth = history[-1] if smooth is None else 0.98 * smooth + 0.02 * history[-1]
            if step % args.ckpt_every == 0:
                save()
            if (now := time.time()) - last_print > 1 or step == args.steps:
                rate = (step - first_step) / (now - start)
                eta = min((args.steps - step) / rate, 60 * args.minutes - (now - start))
                print(f"\rstep {step}/{args.steps}  loss {smooth:.4f}  {rate:.2f} steps/s  "
                      f"ETA {eta / 60:.1f} min ", end="", file=sys.stderr, flush=True)
                last_print = now
        print(file=sys.stderr)
        save()
    finally:
        signal.signal(signal.SIGINT, old_handler)
    if interrupted:
        print(f"interrupted: checkpoint saved at step {step}; continue with --resume {run_dir}", file=sys.stderr)
    return ema, sched, meta, history, dict(steps=step, train_seconds=round(time.time() - start, 1))


# --- sampling (Algorithm 2, or DDIM) ----------------------------------------------------------------

class Progress:
    """A progress line on stderr, redrawn at most once a second: done/total, rate and time left."""

    def __init__(self, total, what):
        self.total, self.what, self.done = total, what, 0
        self.start = self.last = time.time()

    def tick(self, value=None):
        self.done += 1
        now = time.time()
        if now - self.last > 1 or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            print(f"\r{self.what}: step {self.done}/{self.total}  {rate:.1f} steps/s  "
                  f"ETA {(self.total - self.done) / rate / 60:.1f} min ", end="", file=sys.stderr, flush=True)
            self.last = now
        return value

    def close(self):
        if self.done:
            print(file=sys.stderr)


def sample(model, sched, meta, args, device):
    """Draw args.n images, in batches. Returns (samples (n, C, H, W) in [-1, 1], trajectory, seconds)."""
    if meta["conditional"]:
        labels = args.labels or list(range(10))
        y_all = torch.tensor(labels, device=device).repeat(math.ceil(args.n / len(labels)))[:args.n]
    c, s = meta["model_config"]["in_channels"], meta["model_config"]["image_size"]
    gen = torch.Generator(device).manual_seed(args.seed)
    T = sched.T
    # Keep x_t and the predicted x_0 at eight t for the figure (all DDIM steps, then we thin them).
    record = set(range(T)) if args.sampler == "ddim" else set(np.linspace(T - 1, 0, 8).round().astype(int))
    chunks, trajectory, start = [], None, time.time()
    chunk = 1000 if device.type == "cuda" else 256  # a GPU is idle on small batches; a CPU is not
    steps = sched.T if args.sampler == "ddpm" else args.sampling_steps
    progress = Progress(math.ceil(args.n / chunk) * steps, f"sampling {args.n} images, {args.sampler}")
    for i in range(0, args.n, chunk):
        shape = (min(chunk, args.n - i), c, s, s)
        if meta["conditional"]:
            y = y_all[i:i + shape[0]]
            net = (lambda x, t, y=y: model(x, t, y)) if args.guidance is None else \
                classifier_free_guidance(model, y, args.guidance, null_label=10)
        else:
            net = lambda x, t: model(x, t)
        eps_fn = lambda x, t, net=net: progress.tick(net(x, t))  # one network evaluation per step
        kw = dict(generator=gen, device=device, record=record if i == 0 else ())
        with torch.no_grad():
            if args.sampler == "ddpm":
                x, traj = sched.p_sample_loop(eps_fn, shape, **kw)
            else:
                x, traj = sched.ddim_sample_loop(eps_fn, shape, steps=args.sampling_steps, eta=args.eta, **kw)
        chunks.append(x.cpu())
        if i == 0:
            trajectory = traj[::max(1, len(traj) // 8)] if args.sampler == "ddim" else traj
    progress.close()
    return torch.cat(chunks), trajectory, time.time() - start


def evaluate(samples, meta, args):
    """FID and friends (metrics.py) for MNIST samples, if its classifier is already trained and cached."""
    if meta["dataset"] != "mnist" or not (Path(args.data_dir) / metrics.CLASSIFIER_FILE).exists() \
            or args.n <= metrics.K:
        return None
    try:
        classifier, _ = metrics.load_or_train_classifier(args.data_dir, log=lambda *_: None)
        real_test, _ = metrics.load_mnist(args.data_dir, train=False)
    except UserError as e:  # a damaged cache or no test set: the samples are saved; score them later
        print(f"no metrics: {e}", file=sys.stderr)
        return None
    return metrics.evaluate(samples, classifier, real_test)


def main(argv=None):
    args = get_args(argv)
    check_args(args)
    device = pick_device(args.device)
    if args.sample_from:
        ckpt = load_checkpoint(args.sample_from)
        check_conditioning(args, ckpt["meta"]["conditional"])
        meta, history, trained = ckpt["meta"], ckpt["history"], dict(steps=ckpt["step"])
        model = build_model(meta["model_config"], ckpt["ema"], args.sample_from).to(device).eval()
        sched = Schedule(meta["schedule"]["name"], meta["schedule"]["T"])
        tag = f"{args.sampler}{args.sampling_steps if args.sampler == 'ddim' else ''}-n{args.n}-seed{args.seed}"
        out = check_writable(Path(args.sample_from) / "samples" / tag, "--sample-from")
    else:
        ckpt = load_checkpoint(args.resume) if args.resume else None
        if ckpt is not None and "optimizer" not in ckpt:
            raise UserError(f"{args.resume} holds weights for sampling only (no optimiser state), so it "
                            f"cannot be resumed; sample from it with --sample-from {args.resume}")
        check_conditioning(args, ckpt["meta"]["conditional"] if ckpt else args.conditional)
        out = check_writable(args.resume, "--resume") if args.resume else run_folder(args)
        print(f"run folder: {out}", file=sys.stderr)
        model, sched, meta, history, trained = train(args, out, device, ckpt)
        plots.loss_curve(history, out / "loss.png")
    samples, trajectory, seconds = sample(model, sched, meta, args, device)
    atomic_write(out / "samples.npy", lambda tmp: np.save(tmp, samples.numpy().astype(np.float32)))
    plots.sample_grid(samples, out / "samples.png",
                      f"{args.n} samples, {args.sampler.upper()} ({meta['dataset']}, step {trained['steps']})")
    plots.trajectory(trajectory, out / "trajectory.png")
    summary = dict(trained, dataset=meta["dataset"], schedule=meta["schedule"], sampler=args.sampler,
                   sampling_steps=sched.T if args.sampler == "ddpm" else args.sampling_steps, n=args.n,
                   sampling_seconds=round(seconds, 1), seed=args.seed,
                   final_loss=round(float(np.mean(history[-100:])), 4) if history else None,
                   metrics=evaluate(samples, meta, args))
    save_json(out / "summary.json", summary)
    print(f"sampled {args.n} images in {seconds:.1f} s; figures and samples.npy in {out}")
    m = summary["metrics"]
    if m:
        print(f"FID {m['fid']:.2f} (N = {m['n']}), precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
              f"classes present {m['classes_present']}/10, mean confidence {m['confidence']:.3f}")
    elif meta["dataset"] == "mnist":
        print(f"to score them: python metrics.py {out / 'samples.npy'} --data-dir {args.data_dir}")


if __name__ == "__main__":
    run_main(main)
