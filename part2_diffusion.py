"""Part 2: train a DDPM on MNIST and draw digits from pure noise.

    python part2_diffusion.py                      # train, then sample; see runs/ddpm/
    python part2_diffusion.py --minutes 30         # train longer (better digits)
    python part2_diffusion.py --resume runs/ddpm   # continue a run from its checkpoint
    python part2_diffusion.py --sample-from runs/ddpm --sampler ddim --sampling-steps 50 --n 100

This file joins the pieces: data.py gives images in [-1, 1], unet.py the noise predictor eps_theta,
schedule.py the forward process q(x_t | x_0) and the samplers. What is left here is Algorithm 1 of
Ho et al. (2020), the training loop, and the housekeeping around it: figures and a summary here, run
folders and checkpoints in runs.py.

Everything a run writes goes to runs/<name>/: checkpoint.pt, samples.png, samples.npy,
trajectory.png, forward.png, loss.png, config.json and summary.json.

Next: data.py, where the digits come from and how they are scaled.
"""
import contextlib
import copy
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import ddp
import metrics
import plots
from outputs import (DiskFull, HelpFormatter, Progress, UserError, arg_parser, atomic_write,
                     check_writable, end_progress, finite_float, pick_threads, remove_orphans,
                     run_main, save_json)
from runs import (build_model, check_resumable, check_schedule, claim_run_folder, clear_old_run,
                  load_checkpoint, save_checkpoint, unclaim)
from schedule import MAX_T, SCHEDULES, Schedule, classifier_free_guidance
from unet import PRESETS, UNet

# Defaults, chosen by measurement on a 2-core laptop CPU.
DATASET = "mnist"
SCHEDULE = "linear"
T = 1000
PRESET = "cpu"
BATCH_SIZE = 64
LR = 2e-3
WARMUP = 100          # steps of linear learning-rate warm-up: Adam's first steps are noisy
LR_DECAY = False      # then a cosine decay to 0 at the end of the budget (see learning_rate)
EMA_DECAY = 0.999     # the warm-up in update_ema reaches it at step 8,990 (BENCHMARKS.md)
P_UNCOND = 0.1        # with --conditional: how often a label is dropped in training
GRAD_CLIP = 1.0
STEPS = 20000         # on a CPU, --minutes stops training first; on a GPU, this does
MINUTES = 10.0        # the time box of training; sampling comes after (see BENCHMARKS.md)
SAMPLER = "ddpm"
# Network calls per image. DDPM on 250 respaced steps scored as well as all 1000 (Algorithm 2
# itself, --sampling-steps 1000) in a quarter of the time; see BENCHMARKS.md, "Samplers".
SAMPLING_STEPS = {"ddpm": 250, "ddim": 50, "dpm-solver": 20}
N_SAMPLES = 64
NUM_CLASSES = data.NUM_CLASSES  # MNIST's digits, CIFAR-10's classes
NULL_LABEL = NUM_CLASSES        # the label "no label": classifier-free guidance's extra row


def get_args(argv=None):
    p = arg_parser(
        description="Train a DDPM (Ho et al. 2020) on MNIST and sample digits from pure noise.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help=f"dataset to learn (default {DATASET}; if MNIST cannot be found or "
                        "downloaded, a built-in synthetic digits set is used instead, with a "
                        "warning)")
    g.add_argument("--data-dir", default="data",
                   help="where datasets are looked for and downloaded to")
    # The flags that define a run default to None here. settle_flags fills them in: from the
    # defaults for a new run, from the checkpoint for --resume and --sample-from (refusing a flag
    # that differs).
    g = p.add_argument_group("model and noise schedule",
                             "--resume and --sample-from keep the run's own")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help=f"U-Net size (see unet.py; default {PRESET})")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"how beta_t grows with t (default {SCHEDULE})")
    g.add_argument("--T", type=int, default=None, help=f"number of diffusion steps (default {T})")
    g.add_argument("--conditional", action="store_true", default=None,
                   help="condition on the class label (enables --labels and --guidance when "
                        "sampling)")
    g.add_argument("--p-uncond", type=finite_float, default=None,
                   help="with --conditional: how often the label is dropped in training, so one "
                        "network also learns the unconditional eps (classifier-free guidance; "
                        f"default {P_UNCOND})")
    g = p.add_argument_group("training (Algorithm 1)")
    g.add_argument("--steps", type=int, default=STEPS, help="total optimiser steps to train for")
    g.add_argument("--minutes", type=finite_float, default=MINUTES,
                   help="stop training after this many minutes, even if --steps is not reached")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"images per optimiser step (default {BATCH_SIZE}; --resume keeps the "
                        "run's)")
    g.add_argument("--lr", type=finite_float, default=None,
                   help=f"AdamW peak learning rate (default {LR}; --resume keeps the run's)")
    g.add_argument("--ema", type=finite_float, default=None,
                   help="decay of the exponential moving average of the weights used for sampling "
                        f"(default {EMA_DECAY}; --resume keeps the run's)")
    g.add_argument("--ckpt-every", type=int, default=500,
                   help="save a checkpoint every this many steps")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR")
    g = p.add_argument_group("sampling (Algorithm 2, DDIM or DPM-Solver++)")
    g.add_argument("--sample-from", metavar="RUN_DIR",
                   help="skip training: sample from RUN_DIR's checkpoint")
    g.add_argument("--sampler", choices=sorted(SAMPLING_STEPS), default=SAMPLER,
                   help="ddpm: Algorithm 2, stochastic (on fewer, respaced steps if "
                        "--sampling-steps < T); ddim: deterministic DDIM; dpm-solver: "
                        "deterministic DPM-Solver++(2M)")
    g.add_argument("--sampling-steps", type=int, default=None,
                   help="network calls per image, at most T; ddpm with T steps is Algorithm 2 "
                        "itself (default: " + ", ".join(f"{k} for {name}" for name, k in
                                                        SAMPLING_STEPS.items()) + ", or T if less)")
    g.add_argument("--eta", type=finite_float, default=0.0,
                   help="DDIM noise, in [0, 1]: 0 deterministic, 1 like DDPM")
    g.add_argument("--n", type=int, default=N_SAMPLES, help="how many images to draw")
    g.add_argument("--labels", type=int, nargs="+",
                   help="conditional models: class labels to draw, cycled over the --n images")
    g.add_argument("--guidance", type=finite_float, default=None,
                   help="conditional models: guidance scale s (1 = plain conditional, >1 sharper)")
    g = p.add_argument_group("run")
    g.add_argument("--name", default=None,
                   help="run folder name under --runs (default: ddpm, ddpm-2, ...)")
    g.add_argument("--runs", default="runs", help="folder that holds the run folders")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in an existing folder (its files are removed when the new "
                        "run starts)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for weights, batches, noise and samples")
    g.add_argument("--device", default="auto",
                   help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    return p.parse_args(argv)


def check_args(args):
    """Reject bad flags before any minute of training is spent. Float flags are finite by now:
    finite_float refuses NaN and infinity as the command line is read (NaN passes any check)."""
    for flag in ("n", "T", "steps", "batch_size", "sampling_steps", "ckpt_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.T is not None and args.T > MAX_T:  # refuse before the schedule's tables fill the memory
        raise UserError(f"--T {args.T} is too large; at most {MAX_T} (the papers use 1000 to 4000)")
    if args.minutes <= 0 or (args.lr is not None and args.lr <= 0):
        raise UserError("--minutes and --lr must be positive")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {args.ema}")
    for flag in ("eta", "p_uncond"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in [0, 1], got {value}")
    if args.resume and args.sample_from:
        raise UserError("--resume and --sample-from are exclusive: train more, or only sample")


def run_defaults():
    """The flags that define a run, and their defaults for a new one (looked up when called, so that
    a test or a script can change the module's defaults)."""
    return dict(preset=PRESET, schedule=SCHEDULE, T=T, conditional=False, p_uncond=P_UNCOND,
                batch_size=BATCH_SIZE, lr=LR, ema=EMA_DECAY)


def stored_flags(meta):
    """What a checkpoint's metadata says those flags were (and --dataset); preset None if it is none
    of unet.py's presets."""
    cfg = meta["model_config"]
    own = {"image_size", "in_channels", "num_classes"}  # from the data and --conditional
    preset = next((name for name, p in PRESETS.items() if all(cfg.get(k) == v for k, v in p.items()
                                                              if k not in own)), None)
    return dict(preset=preset, schedule=meta["schedule"]["name"], T=meta["schedule"]["T"],
                conditional=meta["conditional"], p_uncond=meta["p_uncond"],
                batch_size=meta["batch_size"], lr=meta["lr"], ema=meta["ema_decay"],
                dataset=meta["requested"])


def settle_flags(args, meta, where):
    """Fill in the flags that define a run: a new run (meta None) takes the defaults for those not
    given. --resume and --sample-from (`where`) take the checkpoint's values, and refuse a flag
    given that contradicts them, rather than ignore it silently."""
    if meta is None:
        for flag, default in run_defaults().items():
            if getattr(args, flag) is None:
                setattr(args, flag, default)
        return
    stored, clashes = stored_flags(meta), []
    for flag, kept in stored.items():
        given = getattr(args, flag)  # None: not on the command line
        if given is not None and kept is not None and given != kept:
            said = f"--{flag.replace('_', '-')}" + ("" if given is True else f" {given}")
            clashes.append(f"{said} (the run has {'no --conditional' if kept is False else kept})")
    if clashes:
        raise UserError(f"{where} keeps the settings the run was trained with; drop the flags that "
                        f"contradict them: {', '.join(clashes)}")
    for flag in run_defaults():
        setattr(args, flag, stored[flag])


def check_sampling(args, conditional):
    """The sampling flags against the model: --labels and --guidance need a class-conditional model,
    and no sampler can take more steps than the T it was trained with. Fills in the sampler's
    default --sampling-steps."""
    if not conditional and (args.labels or args.guidance is not None):
        raise UserError("--labels and --guidance need a model trained with --conditional; "
                        "this one is not")
    if args.labels and not all(0 <= y < NUM_CLASSES for y in args.labels):
        raise UserError(f"--labels must lie in 0..9, got {args.labels}")
    if args.sampling_steps is None:
        args.sampling_steps = min(SAMPLING_STEPS[args.sampler], args.T)
    if args.sampling_steps > args.T:
        raise UserError(f"--sampling-steps {args.sampling_steps} exceeds T = {args.T}; "
                        "use at most T")


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
        raise UserError(f"--device {name} is not usable here ({str(e).splitlines()[0]}); "
                        "try --device cpu")
    return device


def on_device(model, device):
    """Move the model to `device`; on a CPU, also to the channels_last memory format (each pixel's
    channels side by side), in which the CPU's convolutions ran 6% more training steps a minute
    (BENCHMARKS.md). The computation is the same; only the layout in memory changes (and so the
    last bits of rounding)."""
    return model.to(device, memory_format=torch.channels_last if device.type == "cpu"
                    else torch.preserve_format)


def device_name(device):
    """The device in words, for the tables of bench.py and experiments.py."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}, {torch.get_num_threads()} torch threads"


def build_schedule(meta, path):
    check_schedule(meta, path)
    return Schedule(meta["schedule"]["name"], meta["schedule"]["T"])


# --- training (Algorithm 1) -----------------------------------------------------------------------

def setup(args, ckpt):
    """The data, the model and the run's metadata: fresh from the flags, or as stored in a
    checkpoint. images: (N, C, H, W) in [-1, 1]; labels: long (N,)."""
    if ckpt is None:
        torch.manual_seed(args.seed)  # one seed for the weights, the batches, t and eps
        requested, fallback = args.dataset or DATASET, args.dataset is None
    else:
        meta = ckpt["meta"]
        requested, fallback = meta["requested"], meta["fallback"]
    # a DataError is a UserError: one line, before any training
    images, labels, used = data.load(requested, args.data_dir, train=True, fallback=fallback)
    if ckpt is not None:
        if used != meta["dataset"]:
            raise UserError(f"the run trained on {meta['dataset']}, but {args.data_dir} now "
                            f"gives {used}")
        return images, labels, build_model(meta["model_config"], ckpt["model"], args.resume), meta
    model_config = dict(PRESETS[args.preset], image_size=images.shape[-1],
                        in_channels=images.shape[1],
                        num_classes=NUM_CLASSES if args.conditional else None)
    meta = dict(dataset=used, requested=requested, fallback=fallback, model_config=model_config,
                schedule=dict(name=args.schedule, T=args.T), conditional=args.conditional,
                p_uncond=args.p_uncond, batch_size=args.batch_size, lr=args.lr,
                ema_decay=args.ema, seed=args.seed)
    return images, labels, UNet(**model_config), meta


def training_loss(model, sched, x0, y=None):
    """Algorithm 1, lines 3-5, for a batch x0 (B, C, H, W): the simplified loss L_simple (Eq. 14).

    Returns the mean over the batch of
        ||eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t)||^2
    (per pixel), with one t ~ Uniform({1..T}) and one eps ~ N(0, I) drawn for each image.
    """
    # BEGIN EXERCISE 10: the training loss of Algorithm 1
    # HINT: t = torch.randint(0, sched.T, ...) (0-based), eps = torch.randn_like(x0),
    # HINT: x_t by sched.q_sample, then the mean squared error between eps and the model's eps_hat
    t = torch.randint(0, sched.T, (len(x0),), device=x0.device)  # t ~ Uniform({1..T}), 0-based
    eps = torch.randn_like(x0)                                    # eps ~ N(0, I)
    x_t = sched.q_sample(x0, t, eps)                              # Eq. 4
    return F.mse_loss(model(x_t, t, y), eps)                      # Eq. 14
    # END EXERCISE


@dataclass
class Trained:
    """What train() gives back."""
    ema: torch.nn.Module  # the averaged weights: the model that samples
    sched: Schedule
    meta: dict            # the run's settings, as its checkpoint stores them
    history: list         # the loss of every step, a resumed run's earlier steps included
    steps: int
    seconds: float        # the training time of this session
    interrupted: bool     # did Ctrl-C or SIGTERM stop it before --steps or --minutes?


def train(args, run_dir, device, ckpt=None, overwrite=False):
    """Algorithm 1 of Ho et al. (2020):

        repeat
            x0 ~ q(x0);  t ~ Uniform({1, ..., T});  eps ~ N(0, I)
            x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps                (Eq. 4)
            gradient step on ||eps - eps_theta(x_t, t)||^2                         (Eq. 14)
        until --steps, --minutes, Ctrl-C or SIGTERM

    Starts fresh, or from ckpt (--resume). overwrite: run_dir holds an earlier run, whose files
    are removed just before this one writes its first. Returns a Trained.
    """
    images, labels, model, meta = setup(args, ckpt)
    sched = build_schedule(meta, run_dir)
    on_device(model, device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=0.0)
    step, history = restore(ckpt, ema, opt)
    if ddp.is_main():
        start_run_folder(run_dir, args, meta, sched, images, overwrite)
    probe = probe_batch(images, labels if meta["conditional"] else None, sched, device)
    saver = Saver(run_dir, meta, probe, ckpt)
    images, labels = images.to(device), labels.to(device)
    meter = Progress(args.steps, "training", done=step, seconds=60 * args.minutes,
                     show=ddp.is_main())
    share = dict(meta, batch_size=meta["batch_size"] // ddp.size())  # torchrun: see ddp.py

    def draw(step):  # x0 ~ q(x0), with its label
        ddp.seed_step(meta["seed"], step)
        return draw_batch(images, labels, share)
    step, stopped = training_loop(ddp.wrap(model), ema, opt, sched, draw, saver, meter, step,
                                  history, args, meta)
    return Trained(ema, sched, meta, history, step, meter.seconds(), stopped)


def training_loop(model, ema, opt, sched, draw, saver, meter, step, history, args, meta):
    """Algorithm 1's loop, from `step` to --steps, --minutes, Ctrl-C or SIGTERM; Part 3 runs it too.
    draw(step) gives a batch x0 (B, ...) and its condition y. The loss of each step is appended to
    history. Returns (the step reached, whether Ctrl-C or SIGTERM stopped it)."""
    with stop_requests() as stop:
        while step < args.steps and not ddp.any_rank(stop or meter.out_of_time()):
            x0, y = draw(step)                               # x0 ~ q(x0), with its condition
            loss = training_loss(model, sched, x0, y)        # t, eps and the loss: lines 3-5
            saver.check(loss, step + 1)
            gradient_step(model, opt, loss, lr=learning_rate(step, meta["lr"], meter.used()))
            step += 1
            update_ema(ema, model, step, meta["ema_decay"])
            history.append(ddp.mean(loss.item()))  # of the whole batch, over all processes
            if step % args.ckpt_every == 0:
                saver.save(model, ema, opt, step, history)
            meter.tick(f"loss {np.mean(history[-50:]):.4f}")
        meter.close()
        saver.save(model, ema, opt, step, history)
    return step, bool(stop)


def draw_batch(images, labels, meta):
    """x0 ~ q(x0): a batch of training images (B, C, H, W) drawn with replacement, and their labels
    (B,), or None for an unconditional model. A conditional model sees NULL_LABEL instead of the
    label a fraction p_uncond of the time, so that the same network also learns the unconditional
    eps (classifier-free guidance, Ho & Salimans 2022)."""
    idx = torch.randint(0, len(images), (meta["batch_size"],), device=images.device)
    if not meta["conditional"]:
        return images[idx], None
    dropped = torch.rand(len(idx), device=images.device) < meta["p_uncond"]
    return images[idx], labels[idx].masked_fill(dropped, NULL_LABEL)


def learning_rate(step, peak, used):
    """Linear warm-up over WARMUP steps (Adam's first steps are noisy), then constant or, with
    LR_DECAY, a cosine decay to 0 at the end of the budget: `used` is the fraction of it spent,
    by steps or by minutes, whichever is further along (training is time-boxed)."""
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    if not LR_DECAY:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * min(used, 1.0)))


def gradient_step(model, opt, loss, lr):
    """Algorithm 1, line 5: one AdamW step on the loss, gradients clipped to norm GRAD_CLIP."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()


@torch.no_grad()
def update_ema(ema, model, step, decay):
    """ema <- decay * ema + (1 - decay) * model, the average that sampling uses. The decay warms
    up as (1 + step) / (10 + step): with 0.999 from the start, the average would remember the
    random initial weights for the first thousand steps."""
    decay = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)


# --- around the training loop: resume, the run folder, checkpoints, Ctrl-C ------------------------

def restore(ckpt, ema, opt):
    """Put a resumed run's EMA, optimiser and random-number state back. Returns (step, history)."""
    if ckpt is None:
        return 0, []
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["step"], list(ckpt["history"])


def start_run_folder(run_dir, args, meta, sched, images, overwrite):
    """Clear an --overwrite'n run's files, then write config.json (the run's settings and every
    training constant) and forward.png."""
    if overwrite:
        clear_old_run(run_dir)
    save_json(run_dir / "config.json", dict(meta, steps=args.steps, minutes=args.minutes,
                                            warmup=WARMUP, lr_decay=LR_DECAY,
                                            grad_clip=GRAD_CLIP))
    plots.forward_noising(sched, images[:4], run_dir / "forward.png")


def probe_batch(images, y, sched, device):
    """A fixed batch to test weights on: 16 images, each noised at its own t, with noise from a
    generator of its own: testing never moves the run's random numbers (--resume stays exact).
    y: the conditions of the images (labels; Part 3: prompt tokens), or None for an unconditional
    model. Returns (x_t, t, eps, y) on `device`."""
    x0 = images[:16]
    t = torch.linspace(0, sched.T - 1, len(x0)).long()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    y = None if y is None else y[:16].to(device)
    return sched.q_sample(x0, t, eps).to(device), t.to(device), eps.to(device), y


def gives_finite_loss(net, probe):
    """Do these weights work? Finite weights are not enough: after a divergence they can be finite
    and still give NaN. So: is the loss on the probe batch finite?"""
    x_t, t, eps, y = probe
    was_training = net.training
    with torch.no_grad():
        loss = F.mse_loss(net.eval()(x_t, t, y), eps)
    net.train(was_training)
    return bool(torch.isfinite(loss))


class Saver:
    """Writes the run's checkpoint, only ever with weights known to work, and remembers which
    step the checkpoint on disk is from, for the error message of a run that diverges. extra:
    entries stored in every checkpoint besides the training state (Part 3: its autoencoder)."""

    def __init__(self, run_dir, meta, probe, ckpt, extra=None):
        self.run_dir, self.meta, self.probe, self.extra = run_dir, meta, probe, extra or {}
        self.saved = None if ckpt is None else ckpt["step"]

    def kept(self):
        if self.saved is None:
            return "no checkpoint was saved"
        return f"the last good checkpoint, from step {self.saved}, is kept in {self.run_dir}"

    def check(self, loss, step):
        """A NaN loss means the weights are already bad: stop, keeping the last saved checkpoint."""
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step}; try a lower --lr "
                            f"({self.kept()})")

    def save(self, model, ema, opt, step, history):
        if not ddp.is_main():  # torchrun: rank 0 alone writes
            return
        model = getattr(model, "module", model)  # DDP's wrapper holds the model as .module
        if not (gives_finite_loss(model, self.probe) and gives_finite_loss(ema, self.probe)):
            raise UserError(f"the weights diverged by step {step}; try a lower --lr "
                            f"({self.kept()})")
        save_checkpoint(self.run_dir / "checkpoint.pt", dict(
            meta=self.meta, model=model.state_dict(), ema=ema.state_dict(),
            optimizer=opt.state_dict(), step=step, history=history, rng=torch.get_rng_state(),
            **self.extra))
        self.saved = step


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C (SIGINT) and SIGTERM (kill, docker stop, SLURM, a closing terminal) ask training to
    stop: the current step ends, a checkpoint is saved, and the run is not lost. Yields a list
    that is non-empty once a stop was asked for."""
    asked = []
    old = {sig: signal.signal(sig, lambda *_: asked.append(True))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# --- sampling (Algorithm 2, or DDIM) --------------------------------------------------------------

def finite(eps):
    """The network's output, if it is finite: broken weights stop sampling at once, not after
    minutes of drawing NaN images."""
    if not torch.isfinite(eps).all():
        raise UserError("the model's output is not finite (NaN or infinity): its weights are "
                        "broken, as after a diverged training; train it again with a lower --lr")
    return eps


def sample(model, sched, meta, args, device):
    """Draw args.n images, in batches. Returns (samples (n, C, H, W) in [-1, 1], trajectory,
    seconds); the trajectory holds (t, x_t, x0_hat) at eight t of the first batch, for the
    figure."""
    if meta["conditional"]:
        labels = args.labels or list(range(NUM_CLASSES))
        y_all = torch.tensor(labels, device=device).repeat(math.ceil(args.n / len(labels)))[:args.n]
    c, s = meta["model_config"]["in_channels"], meta["model_config"]["image_size"]
    gen = torch.Generator(device).manual_seed(args.seed)
    T, steps = sched.T, args.sampling_steps
    # Keep x_t and x0_hat at eight t for the figure (all the steps, thinned below, if fewer).
    record = set(range(T)) if steps < T else set(np.linspace(T - 1, 0, 8).round().astype(int))
    chunks, trajectory = [], None
    chunk = 1000 if device.type == "cuda" else 256  # a GPU is idle on small batches; a CPU is not
    meter = Progress(math.ceil(args.n / chunk) * steps, f"sampling {args.n} images, {args.sampler}")
    for i in range(0, args.n, chunk):
        shape = (min(chunk, args.n - i), c, s, s)
        net = denoiser(model, meta, args, y_all[i:i + shape[0]] if meta["conditional"] else None)

        def eps_fn(x_t, t, net=net):  # one network call a sampling step
            eps_hat = finite(net(x_t, t))
            meter.tick()
            return eps_hat
        kw = dict(generator=gen, device=device, record=record if i == 0 else ())
        with torch.no_grad():
            x0, traj = run_sampler(sched, eps_fn, shape, args, **kw)
        chunks.append(x0.cpu())
        if i == 0:
            trajectory = traj[::max(1, len(traj) // 8)]
    meter.close()
    return torch.cat(chunks), trajectory, meter.seconds()


def run_sampler(sched, eps_fn, shape, args, **kw):
    """The sampler of --sampler, in --sampling-steps network calls; schedule.py holds them all.
    Returns (x0 samples of `shape`, trajectory)."""
    steps = args.sampling_steps
    if args.sampler == "ddpm" and steps == sched.T:
        return sched.p_sample_loop(eps_fn, shape, **kw)  # Algorithm 2
    if args.sampler == "ddpm":  # Algorithm 2 on a subsequence of the timesteps
        return sched.respaced_sample_loop(eps_fn, shape, steps=steps, **kw)
    if args.sampler == "ddim":
        return sched.ddim_sample_loop(eps_fn, shape, steps=steps, eta=args.eta, **kw)
    return sched.dpm_solver_sample_loop(eps_fn, shape, steps=steps, **kw)


def denoiser(model, meta, args, y):
    """The eps_theta(x_t, t) that the samplers call: the model itself, conditioned on the labels y
    (B,) of a conditional model, or guided by them with --guidance."""
    if not meta["conditional"]:
        return lambda x_t, t: model(x_t, t)
    if args.guidance is None:
        return lambda x_t, t: model(x_t, t, y)
    return classifier_free_guidance(model, y, args.guidance, null_label=NULL_LABEL)


def evaluate(samples, meta, args):
    """FID and friends (metrics.py) for MNIST samples (n, 1, 28, 28), if metrics.py's classifier
    is already trained and cached; None otherwise."""
    if meta["dataset"] != "mnist" or not (Path(args.data_dir) / metrics.CLASSIFIER_FILE).exists() \
            or args.n <= metrics.K:
        return None
    try:
        classifier, _ = metrics.load_or_train_classifier(args.data_dir, log=lambda *_: None)
        real_test, _ = metrics.load_mnist(args.data_dir, train=False)
    except UserError as e:  # a damaged cache or no test set: the samples are saved; score later
        print(f"no metrics: {e}", file=sys.stderr)
        return None
    return metrics.evaluate(samples, classifier, real_test)


def sample_folder_name(args):
    """The folder under samples/ for a --sample-from draw. Every flag that changes the samples is in
    the name, so two different draws never share a folder; flags left at their defaults add nothing
    (ddpm250-n64-seed0, ddpm-n64-seed0 for all T steps, ddim50-n64-seed0, dpm-solver20-n64-seed0,
    ddim50-eta0.5-labels3-7-guidance2-n64-seed0)."""
    steps = args.sampling_steps or SAMPLING_STEPS[args.sampler]
    every_step = args.sampler == "ddpm" and steps == args.T
    parts = [args.sampler + ("" if every_step else str(steps))]
    if args.sampler == "ddim" and args.eta != 0:
        parts.append(f"eta{args.eta:g}")
    if args.labels:
        parts.append("labels" + "-".join(map(str, args.labels)))
    if args.guidance is not None:
        parts.append(f"guidance{args.guidance:g}")
    return "-".join(parts + [f"n{args.n}", f"seed{args.seed}"])


def megabytes_needed(args):
    """Roughly what a run writes: two checkpoints (the old one stays until the new one is complete),
    each 4 bytes for every weight, EMA weight and Adam moment; then samples and ~2 MB of figures."""
    config = dict(PRESETS[args.preset or PRESET],
                  num_classes=NUM_CLASSES if args.conditional else None)
    weights = sum(p.numel() for p in UNet(**config).parameters())
    samples = args.n * 28 * 28 * 4
    return (samples + (0 if args.sample_from else 2 * 4 * 4 * weights)) / 1e6 + 2


def main(argv=None):
    run(get_args(argv))


def run(args):
    """Train then sample, or only sample (--sample-from). Returns the summary (what summary.json
    holds), or None if Ctrl-C or SIGTERM stopped training. Other scripts call it with
    outputs.settings(get_args, **flags) for args."""
    check_args(args)
    if args.sample_from and ddp.size() > 1:
        raise UserError("--sample-from runs in one process: start it with python, not torchrun")
    device = ddp.start(pick_device(args.device))  # torchrun: join the other processes
    if device.type == "cpu":
        pick_threads()  # one per idle core: see outputs.pick_threads
    try:
        if args.sample_from:
            return sample_from(args, device)
        return train_then_sample(args, device)
    except DiskFull as e:
        raise UserError(f"{e}; this run needs about {megabytes_needed(args):.0f} MB") from None
    finally:
        ddp.end()


def sample_from(args, device):
    ckpt = load_checkpoint(args.sample_from)
    meta = ckpt["meta"]
    settle_flags(args, meta, "--sample-from")
    check_sampling(args, meta["conditional"])
    model = on_device(build_model(meta["model_config"], ckpt["ema"], args.sample_from), device)
    model.eval()
    sched = build_schedule(meta, args.sample_from)
    out = Path(args.sample_from) / "samples" / sample_folder_name(args)
    check_writable(out, "--sample-from")
    remove_orphans(out)
    return draw(args, out, model, sched, meta, ckpt["history"], dict(steps=ckpt["step"]), device)


def train_then_sample(args, device):
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        check_resumable(ckpt, args.resume)
    settle_flags(args, ckpt and ckpt["meta"], "--resume")
    check_sampling(args, args.conditional)
    if args.batch_size % ddp.size():
        raise UserError(f"a batch of {args.batch_size} does not split over {ddp.size()} "
                        f"processes; make --batch-size a multiple of {ddp.size()}")
    if not ddp.is_main():  # torchrun: only rank 0 touches the run folder
        train(args, Path(args.resume or args.runs), device, ckpt)
        return None
    if args.resume:
        out, made = check_writable(args.resume, "--resume"), []
        remove_orphans(out)  # what a killed run left half-written
    else:
        out, made = claim_run_folder(args)
    threads = torch.get_num_threads()
    print(f"run folder: {out}; {threads} torch thread{'s' if threads > 1 else ''}"
          + (f" in each of {ddp.size()} processes" if ddp.size() > 1 else ""), file=sys.stderr)
    try:
        result = train(args, out, device, ckpt, overwrite=out not in made and not args.resume)
    except BaseException:
        unclaim(made)  # failed before writing anything: leave no empty folder behind
        raise
    plots.loss_curve(result.history, out / "loss.png")
    if result.interrupted:  # the user wants the machine back: no minutes of sampling now
        print(f"interrupted: checkpoint saved at step {result.steps} in {out}; continue "
              f"training with --resume {out}, or draw samples with --sample-from {out}",
              file=sys.stderr)
        return None
    trained = dict(steps=result.steps, train_seconds=result.seconds)
    return draw(args, out, result.ema, result.sched, result.meta, result.history, trained, device)


def draw(args, out, model, sched, meta, history, trained, device):
    """Sample, then write the samples, the figures and summary.json into `out`. Returns the
    summary."""
    samples, trajectory, seconds = sample(model, sched, meta, args, device)
    atomic_write(out / "samples.npy", lambda tmp: np.save(tmp, samples.numpy().astype(np.float32)))
    plots.sample_grid(samples, out / "samples.png", f"{args.n} samples, {args.sampler.upper()}-"
                      f"{args.sampling_steps} ({meta['dataset']}, step {trained['steps']})")
    plots.trajectory(trajectory, out / "trajectory.png")
    summary = dict(trained, dataset=meta["dataset"], schedule=meta["schedule"],
                   sampler=args.sampler, sampling_steps=args.sampling_steps,
                   eta=args.eta if args.sampler == "ddim" else None, labels=args.labels,
                   guidance=args.guidance, n=args.n, sampling_seconds=round(seconds, 1),
                   seed=args.seed,
                   final_loss=round(float(np.mean(history[-100:])), 4) if history else None,
                   metrics=evaluate(samples, meta, args))
    save_json(out / "summary.json", summary)
    print(f"sampled {args.n} images in {seconds:.1f} s; figures and samples.npy in {out}")
    m = summary["metrics"]
    if m:
        print(f"FID {m['fid']:.2f} (N = {m['n']}), precision {m['precision']:.3f}, "
              f"recall {m['recall']:.3f}, classes present {m['classes_present']}/{NUM_CLASSES}, "
              f"mean confidence {m['confidence']:.3f}")
    elif meta["dataset"] == "mnist":
        print(f"to score them: python metrics.py {out / 'samples.npy'} --data-dir {args.data_dir}")
    return summary

if __name__ == "__main__":
    run_main(main)
