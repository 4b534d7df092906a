"""The lab's discussion questions, measured: one command per question, each printing a table and saving a
figure (PNG) and the numbers (JSON) under runs/experiments/.

    python experiments.py schedules   # linear vs cosine vs quadratic: FID against training and sampling steps
    python experiments.py gan         # the DDPM against a DCGAN (gan_baseline.py) for the same wall-clock
    python experiments.py guidance    # Part 3: classifier-free guidance, accuracy against FID

All three need real MNIST and the classifier of metrics.py in --data-dir (it is trained on first
use); guidance also a trained Part 3 run. They are slow on a CPU: each one's --help says how slow,
and gives a shorter variant.
"""
import argparse

from outputs import arg_parser, run_main


# --- schedules ---------------------------------------------------------------------------------------

MEASURE_DDIM_STEPS = 50  # the sampler of the measurements during training: DDIM-50


def schedules_experiment(argv):
    """Linear vs cosine vs quadratic beta_t (schedule.py), everything else held fixed: the same U-Net (the
    default "cpu" preset), the same seed (so the same initial weights, batches, t, eps and sampling noise)
    and the same number of optimiser steps. The budget is steps, not minutes, so the answer does not depend
    on the machine's speed.

    Each schedule trains in segments that end at each --measure-at step (each resumes the last, like
    part2_diffusion.py --resume); after each, N DDIM-50 samples are scored with metrics.py. The final model
    is then sampled with each of --sampling-steps: K = T (1000) is DDPM (Algorithm 2, every step), a smaller
    K is DDIM with K steps. Every measurement is N images from the same seed against the 10,000 MNIST test
    digits; FID depends on N, so compare at equal N only.

    Writes OUT/schedules.json, rewritten after every measurement (a stopped run keeps what it measured),
    and OUT/schedules.png. Needs real MNIST; trains the classifier of metrics.py first if it is not cached.

    Time on a 2-core laptop CPU (one thread): the defaults take about 4 to 5 hours, mostly sampling
    (DDPM-1000 of 1000 images alone is about 45 minutes per schedule). A CPU variant of about 30 minutes:
        python experiments.py schedules --steps 600 --measure-at 150 300 600 --sampling-steps 100 50 20 10 --n 250
    """
    import contextlib
    import inspect
    import io
    import time
    from pathlib import Path

    import torch

    import metrics
    import flags
    import part2_diffusion
    from outputs import MAX_MINUTES, UserError, check_writable, save_json, seed, settings
    from runs import scratch
    from schedule import SCHEDULES

    p = arg_parser(prog="experiments.py schedules",
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   description=inspect.cleandoc(schedules_experiment.__doc__))
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES), help="schedules to compare")
    p.add_argument("--steps", type=int, default=2000,
                   help=f"training steps per schedule, batch {part2_diffusion.BATCH_SIZE} (default 2000)")
    p.add_argument("--measure-at", type=int, nargs="+", metavar="STEP",
                   help="training steps at which to score DDIM-50 samples (default: STEPS/8, /4, /2 and STEPS; "
                        "STEPS itself is always measured)")
    p.add_argument("--sampling-steps", type=int, nargs="+", default=[1000, 100, 50, 20, 10], metavar="K",
                   help="samplers to compare on the final model: K = T is DDPM, K < T is DDIM-K "
                        "(default 1000 100 50 20 10)")
    p.add_argument("--n", type=int, default=1000, help="images per measurement (default 1000)")
    p.add_argument("--T", type=int, default=part2_diffusion.T,
                   help="diffusion steps (default 1000; fewer only for quick tests, at least 50)")
    p.add_argument("--data-dir", default="data", help="folder with MNIST and mnist-classifier.pt (default data)")
    p.add_argument("--seed", type=seed, default=0, help="the one seed of every run (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--out", default="runs/experiments", help="folder for schedules.json and .png (default %(default)s)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.n <= metrics.K:
        raise UserError(f"--steps must be at least 1 and --n more than {metrics.K} (precision and recall use "
                        f"k = {metrics.K}); got --steps {args.steps}, --n {args.n}")
    if args.T < MEASURE_DDIM_STEPS:
        raise UserError(f"--T must be at least {MEASURE_DDIM_STEPS}: the measurements during training use "
                        f"DDIM-{MEASURE_DDIM_STEPS}; got {args.T}")
    if not all(1 <= k <= args.T for k in args.sampling_steps):
        raise UserError(f"--sampling-steps must lie in 1..T = {args.T} (K = T is DDPM); got {args.sampling_steps}")
    if args.measure_at is None:
        args.measure_at = [m for m in (args.steps // 8, args.steps // 4, args.steps // 2) if m > 0]
    if not all(1 <= m <= args.steps for m in args.measure_at):
        raise UserError(f"--measure-at must lie in 1..--steps = {args.steps}; got {args.measure_at}")
    measure_at = sorted(set(args.measure_at) | {args.steps})  # the sweep samples the final model: score it too
    schedules = list(dict.fromkeys(args.schedules))
    out = check_writable(args.out)
    device = flags.pick_device(args.device)
    metrics.load_or_train_classifier(args.data_dir)  # train it now (if needed), not inside the first measurement
    metrics.load_mnist(args.data_dir, train=False, need="the FID reference is the MNIST test set")  # fail now

    where = flags.device_name(device)
    result = dict(device=where, torch=torch.__version__, complete=False, rows=[], config=dict(
        schedules=schedules, steps=measure_at[-1], measure_at=measure_at, sampling_steps=args.sampling_steps,
        n=args.n, T=args.T, seed=args.seed, preset=part2_diffusion.PRESET, batch_size=part2_diffusion.BATCH_SIZE,
        lr=part2_diffusion.LR, measure_sampler=f"DDIM-{MEASURE_DDIM_STEPS}"))
    json_path, png_path = out / "schedules.json", out / "schedules.png"
    print(f"device: {where}; N = {args.n} images per measurement, seed {args.seed}; results in {json_path}")
    head = (f"{'schedule':10s} {'train steps':>11s} {'sampler':>9s} {'FID':>8s} {'prec.':>6s} {'recall':>6s} "
            f"{'classes':>7s} {'KL(U)':>6s} {'loss':>7s} {'elapsed':>8s}")
    print(head + "\n" + "-" * len(head), flush=True)
    start = time.time()

    def measure(schedule_name, phase, **flags):
        """part2_diffusion.py with these flags (its stdout kept quiet: the row says it all); add
        its row, save."""
        with contextlib.redirect_stdout(io.StringIO()):
            s = part2_diffusion.run(settings(
                part2_diffusion.get_args, data_dir=args.data_dir, seed=args.seed,
                device=str(device), n=args.n, **flags))
        if s is None:  # Ctrl-C or SIGTERM: part2 saved its checkpoint and stopped
            raise UserError(f"interrupted; what was measured is in {json_path}")
        m = s["metrics"]
        sampler = "DDPM" if s["sampler"] == "ddpm" else "DDIM"
        row = dict(schedule=schedule_name, phase=phase, train_steps=s["steps"],
                   sampler=f"{sampler}-{s['sampling_steps']}", sampling_steps=s["sampling_steps"],
                   final_loss=s["final_loss"],  # mean of the last 100 steps
                   train_seconds=s.get("train_seconds"), sampling_seconds=s["sampling_seconds"],
                   elapsed_seconds=round(time.time() - start, 1), **m)
        result["rows"].append(row)
        save_json(json_path, result)
        plot_schedules(result, png_path)
        print(f"{schedule_name:10s} {row['train_steps']:11d} {row['sampler']:>9s} {m['fid']:8.2f} "
              f"{m['precision']:6.3f} {m['recall']:6.3f} {m['classes_present']:5d}/10 "
              f"{m['kl_uniform']:6.3f} {row['final_loss']:7.4f} {row['elapsed_seconds']:7.0f}s",
              flush=True)
        return row

    with scratch("schedules-") as runs:
        for name in schedules:
            run_dir = Path(runs) / name
            first = dict(runs=runs, name=name, dataset="mnist", schedule=name, T=args.T)
            for k, steps in enumerate(measure_at):
                row = measure(name, "training", **(dict(resume=str(run_dir)) if k else first),
                              steps=steps, minutes=MAX_MINUTES,  # steps decide, never the clock
                              sampler="ddim", sampling_steps=MEASURE_DDIM_STEPS)
                if row["train_steps"] != steps:  # Ctrl-C ends a part2 run early: stop here too
                    raise UserError(f"training stopped at step {row['train_steps']} of {steps}; "
                                    f"what was measured is in {json_path}")
            for k in args.sampling_steps:
                sampler = dict(sampler="ddpm") if k == args.T else \
                    dict(sampler="ddim", sampling_steps=k)
                measure(name, "sampling", sample_from=str(run_dir), **sampler)
    result["complete"] = True
    save_json(json_path, result)
    plot_schedules(result, png_path)
    print(f"\n{schedule_table(result)}\n\ntook {(time.time() - start) / 60:.1f} min on {where}; "
          f"wrote {json_path} and {png_path}")


def schedule_table(result):
    """FID per schedule (rows) and measurement (columns): first after each training segment, then per sampler."""
    cfg = result["config"]
    train = [str(s) for s in cfg["measure_at"]]
    samplers = [f"DDPM-{k}" if k == cfg["T"] else f"DDIM-{k}" for k in cfg["sampling_steps"]]
    lines = [f"FID at N = {cfg['n']} (lower is better): {cfg['measure_sampler']} samples after "
             f"{', '.join(train)} training steps | each sampler after {cfg['steps']} steps",
             f"{'schedule':10s}" + "".join(f"{c:>8s}" for c in train) + " |" + "".join(f"{c:>10s}" for c in samplers)]
    for name in cfg["schedules"]:
        mine = [r for r in result["rows"] if r["schedule"] == name]
        by_step = {r["train_steps"]: r["fid"] for r in mine if r["phase"] == "training"}
        by_sampler = {r["sampler"]: r["fid"] for r in mine if r["phase"] == "sampling"}
        lines.append(f"{name:10s}" + "".join(f"{by_step[s]:8.1f}" if s in by_step else f"{'-':>8s}"
                                             for s in cfg["measure_at"]) + " |" +
                     "".join(f"{by_sampler[c]:10.1f}" if c in by_sampler else f"{'-':>10s}" for c in samplers))
    return "\n".join(lines)


def plot_schedules(result, path):
    """Two panels: FID against training steps, and FID against sampling steps (log x), a line per schedule."""
    import plots  # first: it makes matplotlib draw to files only
    import matplotlib.pyplot as plt

    from outputs import save_figure
    cfg = result["config"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in cfg["schedules"]:
        train = [r for r in result["rows"] if r["schedule"] == name and r["phase"] == "training"]
        sweep = [r for r in result["rows"] if r["schedule"] == name and r["phase"] == "sampling"]
        if train:
            left.plot([r["train_steps"] for r in train], [r["fid"] for r in train], "o-", label=name)
        if sweep:
            right.plot([r["sampling_steps"] for r in sweep], [r["fid"] for r in sweep], "o-", label=name)
    left.set(xlabel=f"training steps (batch {cfg['batch_size']})", ylabel=f"FID, N = {cfg['n']} (lower is better)",
             title=f"FID against training ({cfg['measure_sampler']} samples)")
    right.set_xscale("log")
    right.set_xticks(cfg["sampling_steps"], [f"{k}\nDDPM" if k == cfg["T"] else str(k) for k in cfg["sampling_steps"]])
    right.minorticks_off()
    right.set(xlabel=f"sampling steps (DDIM; {cfg['T']} = DDPM, every step)", ylabel=f"FID, N = {cfg['n']}",
              title=f"FID against sampling steps (after {cfg['steps']} training steps)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(title="schedule")
    reference = f"{result['rows'][0]['n_reference']:,}" if result["rows"] else "the"
    fig.suptitle(f"Noise schedules on MNIST, same U-Net, seed and steps: FID of N = {cfg['n']} samples against "
                 f"{reference} test digits ({result['device']}{'' if result['complete'] else '; partial run'})")
    save_figure(fig, path)


# --- gan ---------------------------------------------------------------------------------------------

def gan_experiment(argv):
    """The DDPM of part2_diffusion.py against the DCGAN of gan_baseline.py, each trained for the same
    --minutes on this machine with its default settings. The DDPM is trained once (seed 0; --ddpm-seeds for
    more) and scored on N samples of its default sampler (DDPM on 250 respaced steps); it also draws
    --ddpm-n images with all 1000 steps of Algorithm 2, to time it. The DCGAN is trained once per
    --seeds, to show how much a GAN run depends on its seed. Every set of samples is scored with
    metrics.py against the 10,000 MNIST test digits; FID depends on N, so compare rows at equal N only.

    One table: quality (FID, precision, recall), mode coverage (KL from uniform, classes present),
    confidence, and the sampling cost (network evaluations per image, seconds for the N images). Writes
    OUT/gan.json, OUT/gan_samples.png (64 samples of each run side by side) and OUT/gan_losses.png (the
    training losses of every run). Needs real MNIST; trains the classifier of metrics.py first if needed.

    Time on a 2-core laptop CPU (one thread), defaults: 4 x 10 minutes of training, plus about 6 minutes of
    DDPM-250 and 2 of DDPM-1000 sampling: about 50 minutes. A quick look: --minutes 1 --n 500.
    """
    import contextlib
    import inspect
    import io
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    import gan_baseline
    import metrics
    import flags
    import part2_diffusion
    from runs import load_safely, scratch
    from outputs import UserError, check_writable, finite_float, save_json, seed, settings

    p = arg_parser(prog="experiments.py gan", description=inspect.cleandoc(gan_experiment.__doc__),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=finite_float, default=part2_diffusion.MINUTES,
                   help=f"training minutes of every run, DDPM and DCGAN (default {part2_diffusion.MINUTES})")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2], help="DCGAN seeds (default 0 1 2)")
    p.add_argument("--ddpm-seeds", type=seed, nargs="+", default=[0], help="DDPM seeds (default 0)")
    p.add_argument("--n", type=int, default=1000, help="images per run to score (default 1000)")
    p.add_argument("--ddpm-n", type=int, default=64,
                   help="images to draw with the 1000-step DDPM sampler, for its cost (default 64; 0 skips it)")
    p.add_argument("--data-dir", default="data", help="folder with MNIST and mnist-classifier.pt (default data)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--out", default="runs/experiments", help="folder for gan.json and the figures (%(default)s)")
    args = p.parse_args(argv)
    flags.check_budget(args)  # finite, positive, at most ten weeks: a budget that fires
    if args.n <= metrics.K or 0 < args.ddpm_n <= metrics.K or args.ddpm_n < 0:
        raise UserError(f"--minutes must be positive, --n more than {metrics.K} and --ddpm-n 0 or more than "
                        f"{metrics.K} (precision and recall use k = {metrics.K}); got --minutes {args.minutes}, "
                        f"--n {args.n}, --ddpm-n {args.ddpm_n}")
    out = check_writable(args.out)
    device = flags.pick_device(args.device)
    metrics.load_or_train_classifier(args.data_dir)  # train it now (if needed), so that every run is scored
    metrics.load_mnist(args.data_dir, train=False, need="the FID reference is the MNIST test set")  # fail now
    where = flags.device_name(device)
    print(f"device: {where}; {args.minutes:g} training minutes per run; N = {args.n}", file=sys.stderr)

    rows, losses, grids = [], [], []

    def add_row(method, seed, s):
        """The row of a run (or a sampling) from its summary s; None if Ctrl-C or SIGTERM stopped
        it before sampling."""
        if s is None:
            raise UserError(f"{method}, seed {seed}: interrupted before sampling")
        rows.append(dict(method=method, seed=seed, steps=s["steps"],
                         sampling_steps=s["sampling_steps"], sampling_seconds=s["sampling_seconds"],
                         train_seconds=s.get("train_seconds"), **s["metrics"]))
        return rows[-1]

    common = dict(minutes=args.minutes, data_dir=args.data_dir, device=str(device))
    quiet = contextlib.redirect_stdout(io.StringIO())  # their own summaries: the table says it all
    with scratch("gan-") as runs, quiet:
        for seed in args.ddpm_seeds:
            run_dir = Path(runs) / f"ddpm-seed{seed}"
            summary = part2_diffusion.run(settings(
                part2_diffusion.get_args, **common, dataset="mnist", runs=runs,
                name=run_dir.name, seed=seed, n=args.n))
            sampler = f"{summary['sampler'].upper()}-{summary['sampling_steps']}" if summary else ""
            ddpm = add_row(f"DDPM, {sampler}", seed, summary)
            if ddpm["steps"] < part2_diffusion.STEPS and \
                    ddpm["train_seconds"] < 60 * args.minutes:
                raise UserError(f"the DDPM stopped after {ddpm['train_seconds']} s of "
                                f"{60 * args.minutes:g}: interrupted, so the comparison would "
                                "not be fair")
            if args.ddpm_n:
                row = add_row("DDPM, DDPM-1000", seed, part2_diffusion.run(settings(
                    part2_diffusion.get_args, sample_from=str(run_dir), sampler="ddpm",
                    sampling_steps=part2_diffusion.T, n=args.ddpm_n, seed=seed, data_dir=args.data_dir, device=str(device))))
                row["train_seconds"] = ddpm["train_seconds"]  # the same model: sampled again
            ckpt = load_safely(run_dir / "checkpoint.pt")
            losses.append((f"DDPM seed {seed}", {"L_simple": ckpt["history"]}))
            grids.append((f"DDPM seed {seed}, {sampler}\n{ddpm['steps']} steps",
                          np.load(run_dir / "samples.npy")[:64]))
        for seed in args.seeds:
            run_dir = Path(runs) / f"gan-seed{seed}"
            add_row("DCGAN", seed, gan_baseline.run(settings(
                gan_baseline.get_args, **common, runs=runs, name=run_dir.name, seed=seed,
                n=args.n)))
            history = load_safely(run_dir / "checkpoint.pt")["history"]
            losses.append((f"DCGAN seed {seed}", history))
            grids.append((f"DCGAN seed {seed}\n{rows[-1]['steps']} steps",
                          np.load(run_dir / "samples.npy")[:64]))

    result = dict(device=where, torch=torch.__version__, rows=rows, config=dict(
        minutes=args.minutes, seeds=args.seeds, ddpm_seeds=args.ddpm_seeds, n=args.n, ddpm_n=args.ddpm_n,
        ddpm=dict(preset=part2_diffusion.PRESET, batch_size=part2_diffusion.BATCH_SIZE, lr=part2_diffusion.LR),
        dcgan=dict(z_dim=gan_baseline.Z_DIM, width=gan_baseline.WIDTH, batch_size=gan_baseline.BATCH_SIZE,
                   lr=gan_baseline.LR)))
    paths = out / "gan.json", out / "gan_samples.png", out / "gan_losses.png"
    save_json(paths[0], result)
    plot_gan_samples(grids, args.minutes, paths[1])
    plot_gan_losses(losses, args.minutes, paths[2])
    print(gan_table(rows))
    gan_fids = [r["fid"] for r in rows if r["method"] == "DCGAN"]
    print(f"\nSame {args.minutes:g} training minutes per run on {where}; FID depends on N: compare rows at equal N. "
          f"DCGAN FID over {len(gan_fids)} seeds: mean {np.mean(gan_fids):.1f}, sd {np.std(gan_fids):.1f}, "
          f"range {min(gan_fids):.1f}-{max(gan_fids):.1f}.\nWrote {', '.join(map(str, paths))}")


def gan_table(rows):
    head = (f"{'method':16s} {'seed':>4s} {'steps':>6s} {'N':>5s} {'FID':>8s} {'prec.':>6s} {'recall':>6s} "
            f"{'KL(U)':>6s} {'classes':>7s} {'conf.':>6s} {'train min':>9s} {'evals/img':>9s} {'sample s':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:16s} {r['seed']:4d} {r['steps']:6d} {r['n']:5d} {r['fid']:8.2f} "
                     f"{r['precision']:6.3f} {r['recall']:6.3f} {r['kl_uniform']:6.3f} {r['classes_present']:4d}/10 "
                     f"{r['confidence']:6.3f} {r['train_seconds'] / 60:9.1f} {r['sampling_steps']:9d} "
                     f"{r['sampling_seconds']:8.2f}")
    return "\n".join(lines)


def plot_gan_samples(grids, minutes, path):
    """[(title, samples (64, 1, 28, 28) in [-1, 1])] -> one 8 x 8 grid per run, side by side."""
    import plots  # first: it makes matplotlib draw to files only
    import matplotlib.pyplot as plt
    import torch
    from outputs import save_figure
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.8), squeeze=False)
    for ax, (title, samples) in zip(axes[0], grids):
        ax.imshow(plots.to_image(plots.tile(torch.from_numpy(samples), 8)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"64 samples of each run, after {minutes:g} min of training")
    save_figure(fig, path)


def plot_gan_losses(losses, minutes, path):
    """Left: the DDPM's L_simple (log scale); right: the DCGAN's D and G losses, one colour per run. Each
    curve is a running mean; dotted: the GAN losses where D cannot tell (2 log 2 and log 2)."""
    import plots  # first: it makes matplotlib draw to files only
    import matplotlib.pyplot as plt
    import numpy as np

    from outputs import save_figure
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for colour, (name, history) in enumerate(losses):
        for key, values in history.items():
            ax, style = (left, "-") if key == "L_simple" else (right, "-" if key == "d" else "--")
            steps, means, _ = plots.running_mean(values)
            ax.plot(steps, means, style, color=f"C{colour}",
                    label=name if key == "L_simple" else f"{name}, {key.upper()}")
    for level in (2 * np.log(2), np.log(2)):
        right.axhline(level, ls=":", color="grey", lw=1)
    left.set(yscale="log", xlabel="training step", ylabel="MSE between eps and eps_theta (log scale)",
             title="DDPM: L_simple (Eq. 14)")
    right.set(xlabel="training step", ylabel="binary cross-entropy (nats)",
              title="DCGAN: D (solid) and G (dashed); dotted: 2 log 2, log 2")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Training losses, {minutes:g} min per run (running means over at most 100 steps)")
    save_figure(fig, path)


# --- guidance ---------------------------------------------------------------------------

GUIDANCE_SCALES = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
ATTRIBUTES = [("thick {}", "thin {}"), ("{} slanted right", "{} slanted left")]  # (more, less)
FIGURE_PROMPTS = ["two", "seven", "thick three", "thin three", "four slanted right",
                  "four slanted left"]


def guidance_experiment(argv):
    """Classifier-free guidance's trade-off, measured on a trained Part 3 run
    (part3_text_to_image.py). For each guidance scale s, from the same starting noise:

      prompt accuracy     N digits of the prompts "zero" ... "nine" (N/10 each): the fraction that
                          metrics.py's classifier reads as the digit the prompt names;
      attribute accuracy  for each digit D, N/40 digits of each of "thick D", "thin D", "D slanted
                          right" and "D slanted left", measured with captions.measure: the fraction
                          of (thick, thin) pairs of the same digit in which the thick one has the
                          wider stroke, and of (right, left) pairs in which the right one leans
                          further right (0.5 is chance, 1 is always);
      FID and friends     of the N digits of the first row against the MNIST test digits (FID
                          depends on N: compare at equal N only).

    Scale 0 ignores the prompt (the unconditional model), 1 is the plain conditional model.
    Writes OUT/guidance.json (rewritten after every scale), OUT/guidance_samples.png (a few
    prompts, one column per scale) and OUT/guidance.png (each accuracy against FID, a point per
    scale). Needs real MNIST; trains the classifier of metrics.py first if it is not cached.

    Time on a 2-core laptop CPU (one thread), defaults: 2N digits with DDIM-50 per scale, about
    two minutes per scale. A quick look: --n 200.
    """
    import torch

    import flags
    import metrics
    import part3_text_to_image as part3
    from outputs import UserError, check_writable, pick_threads, save_json
    from schedule import Schedule

    args = guidance_args(argv)
    ckpt, model, ae = part3.load_run(args.run)
    sched = Schedule(ckpt["meta"]["schedule"]["name"], ckpt["meta"]["schedule"]["T"])
    if not 1 <= args.sampling_steps <= sched.T:
        raise UserError(f"--sampling-steps must lie in 1..T = {sched.T}; got {args.sampling_steps}")
    out = check_writable(args.out)
    device = flags.pick_device(args.device)
    if device.type == "cpu":
        pick_threads()  # one per idle core: see outputs.pick_threads
    classifier = metrics.load_or_train_classifier(args.data_dir)[0]
    test_x, _ = metrics.load_mnist(args.data_dir, train=False,
                                   need="the FID reference is the MNIST test set")
    where = flags.device_name(device)
    result = dict(run=args.run, steps=ckpt["step"], device=where, torch=torch.__version__,
                  complete=False, rows=[], config=dict(n=args.n, scales=args.scales, seed=args.seed,
                                                       sampling_steps=args.sampling_steps))
    net = dict(model=model.to(device), ae=ae.to(device), sched=sched, device=device)
    cells, real_feats = [], metrics.features(classifier, test_x)
    for scale in args.scales:
        row, shown = guidance_row(net, classifier, real_feats, scale, args)
        result["rows"].append(row)
        cells.append(shown)
        save_json(out / "guidance.json", result)
        print(guidance_table(result["rows"][-1:], head=len(result["rows"]) == 1), flush=True)
    result["complete"] = True
    save_json(out / "guidance.json", result)
    plot_guidance_samples(cells, result, out / "guidance_samples.png")
    plot_guidance_tradeoff(result, out / "guidance.png")
    print(f"\n{guidance_table(result['rows'])}\n\nmodel: {args.run}, step {ckpt['step']}; N = "
          f"{args.n}, DDIM-{args.sampling_steps}, {where}; wrote {out / 'guidance.json'}, "
          f"{out / 'guidance_samples.png'} and {out / 'guidance.png'}")


def guidance_args(argv):
    import inspect

    import part3_text_to_image as part3
    from outputs import UserError, finite_float, seed
    p = arg_parser(prog="experiments.py guidance", description=inspect.cleandoc(
        guidance_experiment.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/part3", help="the Part 3 run (default %(default)s)")
    p.add_argument("--scales", type=finite_float, nargs="+", default=GUIDANCE_SCALES,
                   help="guidance scales (default 0 1 2 3 5 7.5)")
    p.add_argument("--n", type=int, default=1000, help="digit-prompt samples per scale (default "
                   "1000; as many again for the attributes)")
    p.add_argument("--sampling-steps", type=int, default=part3.SAMPLING_STEPS,
                   help=f"DDIM steps (default {part3.SAMPLING_STEPS})")
    p.add_argument("--data-dir", default="data",
                   help="MNIST and mnist-classifier.pt (default data)")
    p.add_argument("--seed", type=seed, default=0, help="the seed of every scale (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, ...")
    p.add_argument("--out", default="runs/experiments", help="folder for the results (%(default)s)")
    args = p.parse_args(argv)
    if args.n < 40:
        raise UserError(f"--n must be at least 40 (4 digits of each of the 10 digit prompts, one "
                        f"of each of the 40 attribute prompts); got {args.n}")
    return args


def guidance_row(net, classifier, real_feats, scale, args):
    """One scale's measurements (a dict), and the samples of FIGURE_PROMPTS for the figure."""
    import time

    import captions
    import metrics
    import part3_text_to_image as part3
    start = time.time()
    digit_prompts = [word for word in captions.DIGITS for _ in range(args.n // 10)]
    m = args.n // 40
    attribute_prompts = [form.format(word) for word in captions.DIGITS for pair in ATTRIBUTES
                         for form in pair for _ in range(m)]
    prompts = digit_prompts + attribute_prompts
    images, _ = part3.generate(net["model"], net["ae"], net["sched"], prompts, scale,
                               args.sampling_steps, args.seed, net["device"])
    digits, attributes = images[:len(digit_prompts)], images[len(digit_prompts):]
    # (10 digits, 2 attributes, (more, less), m samples) of the measured widths and slants
    measured = [v.view(10, len(ATTRIBUTES), 2, m) for v in captions.measure(attributes)]
    row = dict(scale=scale, prompt_accuracy=part3.digit_accuracy(classifier, digits, digit_prompts),
               thickness_pairs=pair_fraction(measured[0][:, 0]),
               slant_pairs=pair_fraction(measured[1][:, 1]),
               **metrics.scores(classifier, digits, real_feats),
               seconds=round(time.time() - start, 1))
    shown = [images[[i for i, p in enumerate(prompts) if p == wanted][:4]]
             for wanted in FIGURE_PROMPTS]
    return row, shown


def pair_fraction(values):
    """values (digits, 2, m): for each digit, the fraction of the m x m pairs (more, less) in which
    the first is the larger; the mean over the digits."""
    more, less = values[:, 0, :, None], values[:, 1, None, :]
    return float((more > less).float().mean())


def guidance_table(rows, head=True):
    lines = [f"{'scale':>6s} {'prompt acc.':>11s} {'thick>thin':>10s} {'right>left':>10s} "
             f"{'FID':>8s} {'prec.':>6s} {'recall':>6s} {'classes':>7s} {'seconds':>7s}"] * head
    for r in rows:
        lines.append(f"{r['scale']:6g} {r['prompt_accuracy']:11.3f} {r['thickness_pairs']:10.3f} "
                     f"{r['slant_pairs']:10.3f} {r['fid']:8.2f} {r['precision']:6.3f} "
                     f"{r['recall']:6.3f} {r['classes_present']:5d}/10 {r['seconds']:7.1f}")
    return "\n".join(lines)


def plot_guidance_samples(cells, result, path):
    """FIGURE_PROMPTS (rows) against the scales (columns), the same noise in each column."""
    import plots
    columns = [f"guidance {r['scale']:g}" for r in result["rows"]]
    plots.image_table([list(row) for row in zip(*cells)], [f'"{p}"' for p in FIGURE_PROMPTS], columns,
                path, f"Classifier-free guidance, same noise in every column ({result['run']}, "
                      f"step {result['steps']}, DDIM-{result['config']['sampling_steps']})")


def plot_guidance_tradeoff(result, path):
    """Each accuracy against FID, one point per scale, labelled with it."""
    import plots  # noqa: F401  (first: it makes matplotlib draw to files only)
    import matplotlib.pyplot as plt

    from outputs import save_figure
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in [("prompt_accuracy", "prompt accuracy (the classifier reads the digit)"),
                       ("thickness_pairs", "thick > thin, fraction of pairs"),
                       ("slant_pairs", "slanted right > left, fraction of pairs")]:
        ax.plot([r["fid"] for r in rows], [r[key] for r in rows], "o-", label=label)
        for r in rows:
            ax.annotate(f"{r['scale']:g}", (r["fid"], r[key]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.axhline(0.5, ls=":", color="grey", lw=1, label="chance: pairs (0.5), digits (0.1)")
    ax.axhline(0.1, ls=":", color="grey", lw=1)
    ax.set(xlabel=f"FID of the digit-prompt samples, N = {rows[0]['n']} (lower is better)",
           ylabel="accuracy", ylim=(0, 1.02),
           title=f"Guidance scale: fitting the prompt against quality ({result['run']}, "
                 f"step {result['steps']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


EXPERIMENTS = {"schedules": schedules_experiment, "gan": gan_experiment,
               "guidance": guidance_experiment}


def main():
    parser = arg_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(EXPERIMENTS), help="which experiment to run")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="its flags: `python experiments.py NAME --help`")
    args = parser.parse_args()
    EXPERIMENTS[args.which](args.flags)


if __name__ == "__main__":
    run_main(main)
