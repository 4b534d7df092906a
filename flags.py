"""The command line that Part 2, Part 3 and the DCGAN share: flag groups, their checks, a run's
flags settled against its checkpoint, the device, and the names of sample folders.

    g = flags.training_group(p, STEPS, MINUTES, BATCH_SIZE, LR, EMA_DECAY)
    flags.run_group(p, "ddpm")
    flags.check_training(args)
    flags.settle(args, RUN_DEFAULTS, stored, "--resume")

Each script passes its own defaults; this file imports no script. A student can skip it: it is
housekeeping, not diffusion.
"""
import math
import re

import torch

import data
import ddp
from outputs import MAX_MINUTES, UserError, finite_float, memory_bytes, pick_threads, seed
from schedule import MAX_T, SCHEDULES
from unet import PRESETS, UNet


# --- flag groups ----------------------------------------------------------------------------------

def data_group(p, dataset):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help=f"dataset to learn (default {dataset}; if MNIST cannot be found or "
                        "downloaded, a built-in synthetic digits set is used instead, with a "
                        "warning)")
    g.add_argument("--data-dir", default="data",
                   help="where datasets are looked for and downloaded to")


def model_group(p, preset, schedule, T, p_uncond):
    """Part 2's flags that define the model. They default to None here: settle fills them in, from
    the defaults for a new run, from the checkpoint for --resume and --sample-from."""
    g = p.add_argument_group("model and noise schedule",
                             "--resume and --sample-from keep the run's own")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help=f"U-Net size (see unet.py; default {preset})")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"how beta_t grows with t (default {schedule})")
    g.add_argument("--T", type=int, default=None, help=f"number of diffusion steps (default {T})")
    g.add_argument("--conditional", action="store_true", default=None,
                   help="condition on the class label (enables --labels and --guidance when "
                        "sampling)")
    g.add_argument("--p-uncond", type=finite_float, default=None,
                   help="with --conditional: how often the label is dropped in training, so one "
                        "network also learns the unconditional eps (classifier-free guidance; "
                        f"default {p_uncond})")

def training_group(p, steps, budget, batch_size, lr, ema, what="images"):
    """--steps, --minutes, --batch-size, --lr, --ema, --ckpt-every and --resume. The flags that
    define a run (--batch-size, --lr, --ema) default to None here: settle fills them in."""
    g = p.add_argument_group("training (Algorithm 1)", "--resume and --sample-from keep the run's "
                                                       "own --batch-size, --lr and --ema")
    g.add_argument("--steps", type=int, default=steps, help="total optimiser steps to train for")
    g.add_argument("--minutes", type=finite_float, default=budget,
                   help="stop training after this many minutes, even if --steps is not reached")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"{what} per optimiser step (default {batch_size})")
    g.add_argument("--lr", type=finite_float, default=None,
                   help=f"AdamW peak learning rate (default {lr})")
    g.add_argument("--ema", type=finite_float, default=None,
                   help="decay of the exponential moving average of the weights used for sampling "
                        f"(default {ema})")
    g.add_argument("--ckpt-every", type=int, default=500,
                   help="save a checkpoint every this many steps")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR")
    return g


def sampling_group(p, sampler, sampling_steps, n):
    """Part 2's sampling flags. sampling_steps: the default number of steps of each sampler."""
    g = p.add_argument_group("sampling (Algorithm 2, DDIM or DPM-Solver++)")
    g.add_argument("--sample-from", metavar="RUN_DIR",
                   help="skip training: sample from RUN_DIR's checkpoint")
    g.add_argument("--sampler", choices=sorted(sampling_steps), default=sampler,
                   help="ddpm: Algorithm 2, stochastic (on fewer, respaced steps if "
                        "--sampling-steps < T); ddim: deterministic DDIM; dpm-solver: "
                        "deterministic DPM-Solver++(2M)")
    g.add_argument("--sampling-steps", type=int, default=None,
                   help="network calls per image, at most T; ddpm with T steps is Algorithm 2 "
                        "itself (default: " + ", ".join(f"{k} for {name}" for name, k in
                                                        sampling_steps.items()) + ", or T if less)")
    g.add_argument("--eta", type=finite_float, default=0.0,
                   help="DDIM noise, in [0, 1]: 0 deterministic, 1 like DDPM")
    g.add_argument("--n", type=int, default=n, help="how many images to draw")
    g.add_argument("--labels", type=int, nargs="+",
                   help="conditional models: class labels to draw, cycled over the --n images")
    g.add_argument("--guidance", type=finite_float, default=None,
                   help="conditional models: guidance scale s (1 = plain conditional, >1 sharper)")


def run_group(p, prefix, seed_help="seed for weights, batches, noise and samples"):
    """--name, --runs, --overwrite, --seed and --device."""
    g = p.add_argument_group("run")
    g.add_argument("--name", default=None,
                   help=f"run folder name under --runs (default: {prefix}, {prefix}-2, ...)")
    g.add_argument("--runs", default="runs", help="folder that holds the run folders")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in an existing folder (its files are removed when the new "
                        "run starts)")
    g.add_argument("--seed", type=seed, default=0, help=seed_help)
    g.add_argument("--device", default="auto",
                   help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    return g


# --- checks, before any minute of work ------------------------------------------------------------

def check_counts(args, names):
    for flag in names:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


# Rough memory of one image: a training image's activations and gradients in the "cpu" U-Net
# (~2 MB at 28 x 28), and a drawn image kept with its float copies (samples, trajectory, scores).
TRAIN_BYTES, SAMPLE_BYTES = 2e6, 3e4


def check_memory(flag, count, each, what):
    """Refuse a --batch-size or --n that could never fit in this machine's memory, with the
    estimate."""
    memory = memory_bytes()
    if count is not None and memory and count * each > memory:
        raise UserError(f"{flag} {count} needs about {count * each / 1e9:.3g} GB of memory for "
                        f"its {what}, more than this machine's {memory / 1e9:.0f} GB; use a "
                        f"smaller {flag}")


def check_budget(args):
    """--minutes finite, positive and at most MAX_MINUTES (a budget that can fire), also when a
    script sets it without the command line (outputs.settings)."""
    if not (isinstance(args.minutes, (int, float)) and math.isfinite(args.minutes)
            and 0 < args.minutes <= MAX_MINUTES):
        raise UserError(f"--minutes must be positive and at most {MAX_MINUTES} (about ten weeks), "
                        f"got {args.minutes}")


def check_training(args):
    """The training flags of training_group (and --p-uncond, --sample-from where a script has them).
    Float flags are finite by now: finite_float refuses NaN and infinity as the line is read."""
    check_counts(args, ("steps", "batch_size", "ckpt_every", "n", "sampling_steps"))
    check_budget(args)
    check_memory("--batch-size", args.batch_size, TRAIN_BYTES, "training batch")
    check_memory("--n", getattr(args, "n", None), SAMPLE_BYTES, "samples")
    if args.lr is not None and args.lr <= 0:
        raise UserError("--minutes and --lr must be positive")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {args.ema}")
    if getattr(args, "p_uncond", None) is not None and not 0 <= args.p_uncond <= 1:
        raise UserError(f"--p-uncond must be in [0, 1], got {args.p_uncond}")
    if args.resume and args.sample_from:
        raise UserError("--resume and --sample-from are exclusive: train more, or only sample")


def check_part2(args):
    """Part 2's flags beyond the training ones: T, eta, and --sample-from in one process."""
    check_training(args)
    check_counts(args, ("T",))
    if args.T is not None and args.T > MAX_T:  # refuse before the schedule's tables fill the memory
        raise UserError(f"--T {args.T} is too large; at most {MAX_T} (the papers use 1000 to 4000)")
    if not 0 <= args.eta <= 1:
        raise UserError(f"--eta must be in [0, 1], got {args.eta}")
    if args.sample_from and ddp.size() > 1:
        raise UserError("--sample-from runs in one process: start it with python, not torchrun")


def check_batch_split(args):
    """torchrun: each of the N processes draws --batch-size / N images."""
    if args.batch_size % ddp.size():
        raise UserError(f"a batch of {args.batch_size} does not split over {ddp.size()} "
                        f"processes; make --batch-size a multiple of {ddp.size()}")


def check_sampling(args, conditional, sampling_steps, num_classes=data.NUM_CLASSES):
    """Part 2's sampling flags against the model: --labels and --guidance need a class-conditional
    model, and no sampler can take more steps than the T it was trained with. Fills in the
    sampler's default --sampling-steps (sampling_steps[sampler], or T if less)."""
    if not conditional and (args.labels or args.guidance is not None):
        raise UserError("--labels and --guidance need a model trained with --conditional; "
                        "this one is not")
    if args.labels and not all(0 <= y < num_classes for y in args.labels):
        raise UserError(f"--labels must lie in 0..{num_classes - 1}, got {args.labels}")
    if args.sampling_steps is None:
        args.sampling_steps = min(sampling_steps[args.sampler], args.T)
    if args.sampling_steps > args.T:
        raise UserError(f"--sampling-steps {args.sampling_steps} exceeds T = {args.T}; "
                        "use at most T")


def settle_part2(args, defaults, meta, where, sampling_steps):
    """settle, for Part 2 (meta: the checkpoint's, or None for a new run), then its sampling checks
    and the torchrun batch split."""
    settle(args, defaults, meta and stored_flags(meta), where)
    check_sampling(args, args.conditional, sampling_steps)
    check_batch_split(args)


def stored_flags(meta):
    """What a Part 2 checkpoint's metadata says its flags were (and --dataset); preset None if it
    is none of unet.py's presets."""
    cfg, own = meta["model_config"], {"image_size", "in_channels", "num_classes"}
    preset = next((name for name, p in PRESETS.items() if all(cfg.get(k) == v for k, v in p.items()
                                                              if k not in own)), None)
    return dict(preset=preset, schedule=meta["schedule"]["name"], T=meta["schedule"]["T"],
                conditional=meta["conditional"], p_uncond=meta["p_uncond"],
                batch_size=meta["batch_size"], lr=meta["lr"], ema=meta["ema_decay"],
                dataset=meta["requested"])


def settle(args, defaults, stored, where):
    """Fill in the flags that define a run. A new run (stored None) takes `defaults` for those not
    given. --resume and --sample-from (`where`) take the values the checkpoint `stored`, and refuse
    a flag given that contradicts them, rather than ignore it silently."""
    if stored is None:
        for flag, default in defaults.items():
            if getattr(args, flag) is None:
                setattr(args, flag, default)
        return
    clashes = []
    for flag, kept in stored.items():
        given = getattr(args, flag)  # None: not on the command line
        if given is not None and kept is not None and given != kept:
            said = f"--{flag.replace('_', '-')}" + ("" if given is True else f" {given}")
            clashes.append(f"{said} (the run has {'no --conditional' if kept is False else kept})")
    if clashes:
        raise UserError(f"{where} keeps the settings the run was trained with; drop the flags that "
                        f"contradict them: {', '.join(clashes)}")
    for flag in defaults:
        setattr(args, flag, stored[flag])


# --- the device -----------------------------------------------------------------------------------

def pick_device(name, threads=True):
    """--device as a torch.device; on a CPU, with threads, one torch thread per idle core
    (outputs.pick_threads)."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        if not re.fullmatch(r"cpu|(cuda|mps)(:\d+)?", name):
            raise UserError(f"--device {name!r} is not a device this lab knows; give auto, cpu, "
                            "cuda (or cuda:N) or mps")
        try:
            device = torch.device(name)
            torch.empty(1, device=device)
        except Exception as e:  # noqa: BLE001 - any failure here means: not usable
            raise UserError(f"--device {name} is not usable here ({str(e).splitlines()[0]}); "
                            "try --device cpu")
    if device.type == "cpu" and threads:
        pick_threads()
    return device


def on_device(model, device):
    """Move the model to `device`; on a CPU, also to the channels_last memory format (each pixel's
    channels side by side), in which the CPU's convolutions ran 6% more training steps a minute.
    The computation is the same; only the layout in memory changes (and so the last bits of
    rounding)."""
    return model.to(device, memory_format=torch.channels_last if device.type == "cpu"
                    else torch.preserve_format)


def device_name(device):
    """The device in words, for the tables of experiments.py and the benchmarks."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type}, {threads} torch thread{'s' if threads > 1 else ''}"


def megabytes_needed(args, preset, num_classes=data.NUM_CLASSES):
    """Roughly what a Part 2 run writes: two checkpoints (the old one stays until the new one is
    complete), each 4 bytes for every weight, EMA weight and Adam moment; then samples and ~2 MB of
    figures."""
    config = dict(PRESETS[args.preset or preset],
                  num_classes=num_classes if args.conditional else None)
    weights = sum(p.numel() for p in UNet(**config).parameters())
    return (args.n * 28 * 28 * 4 + (0 if args.sample_from else 2 * 4 * 4 * weights)) / 1e6 + 2


def sample_folder_name(args, sampling_steps):
    """The folder under samples/ for a Part 2 --sample-from draw (ddpm250-n64-seed0,
    ddpm-n64-seed0 for all T steps, ddim50-eta0.5-labels3-7-guidance2-n64-seed0): flags at their
    defaults add nothing."""
    steps = args.sampling_steps or sampling_steps[args.sampler]
    every_step = args.sampler == "ddpm" and steps == args.T
    parts = [args.sampler + ("" if every_step else str(steps))]
    if args.sampler == "ddim" and args.eta != 0:
        parts.append(f"eta{exact(args.eta)}")
    if args.labels:
        parts.append("labels" + "-".join(map(str, args.labels)))
    if args.guidance is not None:
        parts.append(f"guidance{exact(args.guidance)}")
    return folder_name(parts, args.n, args.seed)


def exact(value):
    """A float as a folder name gives it: short (2, 0.5) where that is exact, else every digit
    (0.30000001), so that two different values never share a folder."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def folder_name(parts, n, seed):
    """The folder under samples/ for a --sample-from draw: every flag that changes the samples,
    then n and the seed, so two different draws never share a folder. parts: strings, or (name,
    float) pairs, which give name + exact(float)."""
    parts = [p if isinstance(p, str) else p[0] + exact(p[1]) for p in parts]
    return "-".join([*parts, *([] if n is None else [f"n{n}"]), f"seed{seed}"])
