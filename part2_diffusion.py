"""Part 2: train a DDPM on MNIST and draw digits from pure noise (Ho et al. 2020).

    python part2_diffusion.py                      # train 10 minutes, then sample; see runs/ddpm/
    python part2_diffusion.py --resume runs/ddpm   # continue a run from its checkpoint
    python part2_diffusion.py --sample-from runs/ddpm --sampler ddim --sampling-steps 50 --n 100

Read it beside the paper: each line of its Algorithms 1 and 2, and where it is carried out.

    Algorithm 1, training                                  here
    1: repeat                                              train: while run.goes_on()
    2:   x0 ~ q(x0)                                        draw_batch
    3:   t ~ Uniform({1, ..., T})                          training_loss (exercise 10)
    4:   eps ~ N(0, I)                                     training_loss
    5:   gradient step on ||eps - eps_theta(x_t, t)||^2    training_loss, then gradient_step
         x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Eq. 4)
    6: until converged                                     --steps or --minutes (runs.Run)
       beside it: the warm-up (learning_rate), clipping (gradient_step), the EMA (update_ema)

    Algorithm 2, sampling                                  sample, then schedule.py
    1: x_T ~ N(0, I)                                       p_sample_loop
    2: for t = T, ..., 1 do                                p_sample_loop
    3:   z ~ N(0, I) if t > 1, else z = 0                  p_sample (exercise 6)
    4:   x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t)
                   + sigma_t z                             p_sample, with eps_theta below
    5: end for;  6: return x0                              (DDIM, DPM-Solver++: --sampler)

data.py gives images in [-1, 1], unet.py the network, schedule.py q(x_t | x0) and the samplers;
flags.py, runs.py, outputs.py and ddp.py the run around them (the command line, folders and
checkpoints, Ctrl-C, torchrun). A run writes checkpoint.pt, figures, samples and summary.json.

Next: data.py, where the digits come from and how they are scaled.
"""
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

import data
import ddp
import flags
import metrics
import plots
import runs
from outputs import DiskFull, HelpFormatter, Progress, UserError, arg_parser, run_main, save_json
from schedule import classifier_free_guidance
from unet import PRESETS, UNet

# Defaults, chosen by measurement on a 2-core laptop CPU.
DATASET, SCHEDULE, T, PRESET = "mnist", "linear", 1000, "cpu"
BATCH_SIZE, LR = 64, 2e-3
WARMUP = 100          # steps of linear learning-rate warm-up: Adam's first steps are noisy
LR_DECAY = False      # then a cosine decay to 0 at the end of the budget (see learning_rate)
EMA_DECAY = 0.999     # the warm-up in update_ema reaches it at step 8,990
P_UNCOND = 0.1        # with --conditional: how often a label is dropped in training
GRAD_CLIP = 1.0
STEPS = 20000         # on a CPU, --minutes stops training first; on a GPU, this does
MINUTES = 10.0        # the time box of training; sampling comes after
SAMPLER, N_SAMPLES = "ddpm", 64
# Network calls per image (DDPM-250 scored as well as all 1000, Algorithm 2 itself, in 1/4 the time)
SAMPLING_STEPS = {"ddpm": 250, "ddim": 50, "dpm-solver": 20}
NUM_CLASSES = data.NUM_CLASSES  # MNIST's digits, CIFAR-10's classes
NULL_LABEL = NUM_CLASSES        # the label "no label": classifier-free guidance's extra row


# --- Algorithm 1: training ------------------------------------------------------------------------

def draw_batch(images, labels, meta):
    """x0 ~ q(x0): training images (B, C, H, W) drawn with replacement, and their labels (B,), or
    None for an unconditional model. A conditional model sees NULL_LABEL a fraction p_uncond of the
    time, so the same network also learns the unconditional eps (Ho & Salimans 2022's guidance)."""
    idx = torch.randint(0, len(images), (meta["batch_size"],), device=images.device)
    if not meta["conditional"]:
        return images[idx], None
    dropped = torch.rand(len(idx), device=images.device) < meta["p_uncond"]
    return images[idx], labels[idx].masked_fill(dropped, NULL_LABEL)


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


def learning_rate(step, peak, used):
    """Linear warm-up over WARMUP steps (Adam's first steps are noisy), then constant or, with
    LR_DECAY, a cosine decay to 0 at the end of the budget (`used`: the fraction spent)."""
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


def train(model, sched, draw, run, loss_fn=training_loss):
    """Algorithm 1, from run.step until --steps, --minutes, Ctrl-C or SIGTERM (Part 3 runs it too).
    model: eps_theta, trained; draw(step) -> x0 (B, C, H, W) and its condition y (labels, Part 3's
    prompt tokens, or None); run (runs.Run): the EMA, the optimiser, the settings (meta)."""
    ema, opt, meta = run.nets["ema"], run.nets["optimizer"], run.meta
    while run.goes_on():                                       # 1: repeat ... 6: until converged
        x0, y = draw(run.step)                                 # 2: x0 ~ q(x0)
        loss = loss_fn(model, sched, x0, y)                    # 3-5: t, eps, L_simple (Eq. 14)
        lr = learning_rate(run.step, meta["lr"], run.used())
        gradient_step(model, opt, loss, lr)                    # 5: take a gradient step
        update_ema(ema, model, run.step + 1, meta["ema_decay"])
        run.step_done(loss)                                    # history, checkpoints, progress


# --- Algorithm 2: sampling ------------------------------------------------------------------------

def eps_theta(model, meta, args, y):
    """The eps_theta(x_t, t) that the samplers call: the model itself, conditioned on the labels y
    (B,) of a conditional model, or guided by them with --guidance."""
    if not meta["conditional"]:
        return lambda x_t, t: model(x_t, t)
    if args.guidance is None:
        return lambda x_t, t: model(x_t, t, y)
    return classifier_free_guidance(model, y, args.guidance, null_label=NULL_LABEL)


def sample(model, sched, meta, args, device, make_eps_theta=eps_theta):
    """Algorithm 2 (or --sampler's DDIM or DPM-Solver++) for args.n images, in batches. Returns
    (samples (n, C, H, W) in [-1, 1], trajectory, seconds); the trajectory holds (t, x_t, x0_hat) at
    eight t of the first batch (`record`: all of a few steps, thinned below), for the figure."""
    labels = torch.tensor(args.labels or range(NUM_CLASSES), device=device).repeat(args.n)
    chw = (meta["model_config"]["in_channels"], *[meta["model_config"]["image_size"]] * 2)
    gen = torch.Generator(device).manual_seed(args.seed)
    T, steps = sched.T, args.sampling_steps
    record = set(range(T)) if steps < T else set(np.linspace(T - 1, 0, 8).round().astype(int))
    batch = 1000 if device.type == "cuda" else 256  # a GPU is idle on small batches; a CPU is not
    meter = Progress(math.ceil(args.n / batch) * steps, f"sampling {args.n} images, {args.sampler}")
    chunks, trajectory = [], None
    for i in range(0, args.n, batch):
        shape = (min(batch, args.n - i), *chw)
        y = labels[i:i + shape[0]] if meta["conditional"] else None
        eps_theta_y = runs.watched(make_eps_theta(model, meta, args, y), meter, args.guidance)
        kw = dict(generator=gen, device=device, record=record if i == 0 else ())
        with torch.no_grad():
            if args.sampler == "ddpm" and steps == T:       # Algorithm 2 itself
                samples, traj = sched.p_sample_loop(eps_theta_y, shape, **kw)
            elif args.sampler == "ddpm":                    # Algorithm 2 on respaced steps
                samples, traj = sched.respaced_sample_loop(eps_theta_y, shape, steps, **kw)
            elif args.sampler == "ddim":
                samples, traj = sched.ddim_sample_loop(eps_theta_y, shape, steps, args.eta, **kw)
            else:
                samples, traj = sched.dpm_solver_sample_loop(eps_theta_y, shape, steps, **kw)
        chunks.append(samples.cpu())
        if i == 0:
            trajectory = traj[::max(1, len(traj) // 8)]
    meter.close()
    return torch.cat(chunks), trajectory, meter.seconds()


# --- the run: set up, train, draw, write ----------------------------------------------------------

def setup(args, ckpt):
    """The data (N, C, H, W) in [-1, 1] and labels (N,), the model and the run's metadata: new from
    the flags, or as the checkpoint of --resume stores them."""
    meta = ckpt and ckpt["meta"]
    if meta is None:
        torch.manual_seed(args.seed)  # one seed for the weights, the batches, t and eps
    requested = meta["requested"] if meta else args.dataset or DATASET
    fallback = meta["fallback"] if meta else args.dataset is None
    images, labels, used = data.load(requested, args.data_dir, train=True, fallback=fallback)
    if meta:  # a DataError is a UserError: one line, before any training
        if used != meta["dataset"]:
            raise UserError(f"the run trained on {meta['dataset']}, but {args.data_dir} now "
                            f"gives {used}")
        return images, labels, runs.build_model(meta["model_config"], ckpt["model"],
                                                args.resume), meta
    config = dict(PRESETS[args.preset], image_size=images.shape[-1], in_channels=images.shape[1],
                  num_classes=NUM_CLASSES if args.conditional else None)
    meta = dict(dataset=used, requested=requested, fallback=fallback, model_config=config,
                schedule=dict(name=args.schedule, T=args.T), conditional=args.conditional,
                p_uncond=args.p_uncond, batch_size=args.batch_size, lr=args.lr,
                ema_decay=args.ema, seed=args.seed)
    return images, labels, UNet(**config), meta


def fit(args, out, device, ckpt, overwrite, loss_fn):
    """Set up Algorithm 1 (data, network, EMA, optimiser, config.json, forward.png), then train.
    Returns the runs.Run (its step, history and EMA) and the schedule."""
    images, labels, model, meta = setup(args, ckpt)
    sched = runs.build_schedule(meta, out)
    flags.on_device(model, device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=0.0)
    if overwrite:
        runs.clear_old_run(out)
    if ddp.is_main():
        save_json(out / "config.json", dict(meta, steps=args.steps, minutes=args.minutes,
                                            warmup=WARMUP, lr_decay=LR_DECAY, grad_clip=GRAD_CLIP))
        plots.forward_noising(sched, images[:4], out / "forward.png")
    works = runs.divergence_probe(images, labels if meta["conditional"] else None, sched, device)
    draw = ddp.batches(draw_batch, images.to(device), labels.to(device), meta)  # x0 ~ q(x0)
    nets = dict(model=model, ema=ema, optimizer=opt)
    with runs.Run(out if ddp.is_main() else None, args, meta, nets, ckpt, works) as run:
        train(ddp.wrap(model), sched, draw, run, loss_fn)
    ddp.end(together=True)  # torchrun: the processes trained together; rank 0 samples alone
    return run, sched


def write_samples(args, out, model, sched, meta, history, trained, device, make_eps_theta):
    """Sample; write the samples, the figures and summary.json into `out`. Returns the summary."""
    samples, trajectory, seconds = sample(model, sched, meta, args, device, make_eps_theta)
    plots.trajectory(trajectory, out / "trajectory.png")
    summary = dict(trained, dataset=meta["dataset"], schedule=meta["schedule"],
                   sampler=args.sampler, sampling_steps=args.sampling_steps,
                   eta=args.eta if args.sampler == "ddim" else None, labels=args.labels,
                   guidance=args.guidance, n=args.n, sampling_seconds=round(seconds, 1),
                   seed=args.seed,
                   final_loss=round(float(np.mean(history[-100:])), 4) if history else None,
                   metrics=metrics.score_if_cached(samples, meta["dataset"], args.data_dir))
    return runs.write_samples(out, samples, summary, f"{args.n} samples, {args.sampler.upper()}-"
                              f"{args.sampling_steps} ({meta['dataset']}, step {trained['steps']})",
                              args.data_dir)


def sample_from(args, device, make_eps_theta):
    ckpt = runs.load_checkpoint(args.sample_from)
    meta = ckpt["meta"]
    flags.settle_part2(args, run_defaults(), meta, "--sample-from", SAMPLING_STEPS)
    model = runs.build_model(meta["model_config"], ckpt["ema"], args.sample_from)
    sched = runs.build_schedule(meta, args.sample_from)
    out = runs.sample_folder(args.sample_from, sample_folder_name(args))
    return write_samples(args, out, flags.on_device(model, device).eval(), sched, meta,
                         ckpt["history"], dict(steps=ckpt["step"]), device, make_eps_theta)


def train_then_sample(args, device, loss_fn, make_eps_theta):
    ckpt = runs.load_checkpoint(args.resume, resumable=True) if args.resume else None
    flags.settle_part2(args, run_defaults(), ckpt and ckpt["meta"], "--resume", SAMPLING_STEPS)
    out, (run, sched) = runs.train_in_folder(
        args, "ddpm", lambda out, overwrite: fit(args, out, device, ckpt, overwrite, loss_fn))
    if run.stopped or out is None:  # Ctrl-C: the machine is wanted back; torchrun's other ranks
        return None
    with runs.unfinished_exercise(out):
        return write_samples(args, out, run.nets["ema"], sched, run.meta, run.history,
                             run.trained(), device, make_eps_theta)


# --- the command line -----------------------------------------------------------------------------

def get_args(argv=None):
    p = arg_parser(description="Train a DDPM (Ho et al. 2020) on MNIST and sample digits from "
                               "pure noise.", formatter_class=HelpFormatter)
    flags.data_group(p, DATASET)
    flags.model_group(p, PRESET, SCHEDULE, T, P_UNCOND)
    flags.training_group(p, STEPS, MINUTES, BATCH_SIZE, LR, EMA_DECAY)
    flags.sampling_group(p, SAMPLER, SAMPLING_STEPS, N_SAMPLES)
    flags.run_group(p, "ddpm")
    return p.parse_args(argv)


def run_defaults():  # the flags that define a run, and their defaults (looked up when called)
    return dict(preset=PRESET, schedule=SCHEDULE, T=T, conditional=False, p_uncond=P_UNCOND,
                batch_size=BATCH_SIZE, lr=LR, ema=EMA_DECAY)


def sample_folder_name(args):
    return flags.sample_folder_name(args, SAMPLING_STEPS)


def run(args, loss_fn=None, make_eps_theta=eps_theta):
    """Train then sample, or only sample (--sample-from). Returns the summary (summary.json), or
    None if Ctrl-C stopped training. Benchmarks may pass variants of training_loss, eps_theta."""
    flags.check_part2(args)
    device = ddp.start(flags.pick_device(args.device))  # torchrun: join the other processes
    try:
        if args.sample_from:
            return sample_from(args, device, make_eps_theta)
        return train_then_sample(args, device, loss_fn or training_loss, make_eps_theta)
    except DiskFull as e:
        megabytes = flags.megabytes_needed(args, PRESET)
        raise UserError(f"{e}; this run needs about {megabytes:.0f} MB") from None
    finally:
        ddp.end()


def main(argv=None):
    return run(get_args(argv))


if __name__ == "__main__":
    run_main(main)
