"""The lab's discussion questions, measured: one command per question, each printing a table and saving a
figure (PNG) and the numbers (JSON) under runs/experiments/.

    python experiments.py schedules   # linear vs cosine vs quadratic: FID against training and sampling steps
    python experiments.py gan         # the DDPM against a DCGAN (gan_baseline.py) for the same wall-clock

Both need real MNIST and the classifier of metrics.py in --data-dir (it is trained on first use). They are
slow on a CPU: each one's --help says how slow, and gives a shorter variant.
"""
import argparse

from outputs import arg_parser, run_main


# --- schedules ---------------------------------------------------------------------------------------

MEASURE_DDIM_STEPS = 50  # the sampler of the measurements during training: DDIM-50, as bench.py train uses


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
    import tempfile
    import time
    from pathlib import Path

    import torch

    import metrics
    import part2_diffusion
    from outputs import UserError, check_writable, save_json, settings
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
    p.add_argument("--seed", type=int, default=0, help="the one seed of every run (default 0)")
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
    device = part2_diffusion.pick_device(args.device)
    metrics.load_or_train_classifier(args.data_dir)  # train it now (if needed), not inside the first measurement
    metrics.load_mnist(args.data_dir, train=False, need="the FID reference is the MNIST test set")  # fail now

    where = part2_diffusion.device_name(device)
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

    with tempfile.TemporaryDirectory(prefix="schedules-") as runs:
        for name in schedules:
            run_dir = Path(runs) / name
            first = dict(runs=runs, name=name, dataset="mnist", schedule=name, T=args.T)
            for k, steps in enumerate(measure_at):
                row = measure(name, "training", **(dict(resume=str(run_dir)) if k else first),
                              steps=steps, minutes=1e9,  # steps decide, never the clock
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
    more) and scored on N DDIM-50 samples; it also draws --ddpm-n images with its own 1000-step sampler
    (Algorithm 2), to time it. The DCGAN is trained once per --seeds, to show how much a GAN run depends on
    its seed. Every set of samples is scored with metrics.py against the 10,000 MNIST test digits; FID
    depends on N, so compare rows at equal N only.

    One table: quality (FID, precision, recall), mode coverage (KL from uniform, classes present),
    confidence, and the sampling cost (network evaluations per image, seconds for the N images). Writes
    OUT/gan.json, OUT/gan_samples.png (64 samples of each run side by side) and OUT/gan_losses.png (the
    training losses of every run). Needs real MNIST; trains the classifier of metrics.py first if needed.

    Time on a 2-core laptop CPU (one thread), defaults: 4 x 10 minutes of training, plus about 3 minutes of
    DDIM-50 and 3 of DDPM-1000 sampling: about 50 minutes. A quick look: --minutes 1 --n 500.
    """
    import contextlib
    import inspect
    import io
    import sys
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    import gan_baseline
    import metrics
    import part2_diffusion
    from outputs import UserError, check_writable, save_json, settings

    p = arg_parser(prog="experiments.py gan", description=inspect.cleandoc(gan_experiment.__doc__),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=part2_diffusion.MINUTES,
                   help=f"training minutes of every run, DDPM and DCGAN (default {part2_diffusion.MINUTES})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="DCGAN seeds (default 0 1 2)")
    p.add_argument("--ddpm-seeds", type=int, nargs="+", default=[0], help="DDPM seeds (default 0)")
    p.add_argument("--n", type=int, default=1000, help="images per run to score (default 1000)")
    p.add_argument("--ddpm-n", type=int, default=64,
                   help="images to draw with the 1000-step DDPM sampler, for its cost (default 64; 0 skips it)")
    p.add_argument("--data-dir", default="data", help="folder with MNIST and mnist-classifier.pt (default data)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--out", default="runs/experiments", help="folder for gan.json and the figures (%(default)s)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.n <= metrics.K or 0 < args.ddpm_n <= metrics.K or args.ddpm_n < 0:
        raise UserError(f"--minutes must be positive, --n more than {metrics.K} and --ddpm-n 0 or more than "
                        f"{metrics.K} (precision and recall use k = {metrics.K}); got --minutes {args.minutes}, "
                        f"--n {args.n}, --ddpm-n {args.ddpm_n}")
    out = check_writable(args.out)
    device = part2_diffusion.pick_device(args.device)
    metrics.load_or_train_classifier(args.data_dir)  # train it now (if needed), so that every run is scored
    metrics.load_mnist(args.data_dir, train=False, need="the FID reference is the MNIST test set")  # fail now
    where = part2_diffusion.device_name(device)
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
    with tempfile.TemporaryDirectory(prefix="gan-") as runs, quiet:
        for seed in args.ddpm_seeds:
            run_dir = Path(runs) / f"ddpm-seed{seed}"
            ddpm = add_row("DDPM, DDIM-50", seed, part2_diffusion.run(settings(
                part2_diffusion.get_args, **common, dataset="mnist", runs=runs,
                name=run_dir.name, seed=seed, n=args.n, sampler="ddim", sampling_steps=50)))
            if ddpm["steps"] < part2_diffusion.STEPS and \
                    ddpm["train_seconds"] < 60 * args.minutes:
                raise UserError(f"the DDPM stopped after {ddpm['train_seconds']} s of "
                                f"{60 * args.minutes:g}: interrupted, so the comparison would "
                                "not be fair")
            if args.ddpm_n:
                row = add_row("DDPM, DDPM-1000", seed, part2_diffusion.run(settings(
                    part2_diffusion.get_args, sample_from=str(run_dir), sampler="ddpm",
                    n=args.ddpm_n, seed=seed, data_dir=args.data_dir, device=str(device))))
                row["train_seconds"] = ddpm["train_seconds"]  # the same model: sampled again
            ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
            losses.append((f"DDPM seed {seed}", {"L_simple": ckpt["history"]}))
            grids.append((f"DDPM seed {seed}, DDIM-50\n{ddpm['steps']} steps",
                          np.load(run_dir / "samples.npy")[:64]))
        for seed in args.seeds:
            run_dir = Path(runs) / f"gan-seed{seed}"
            add_row("DCGAN", seed, gan_baseline.run(settings(
                gan_baseline.get_args, **common, runs=runs, name=run_dir.name, seed=seed,
                n=args.n)))
            history = torch.load(run_dir / "checkpoint.pt", weights_only=False)["history"]
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


EXPERIMENTS = {"schedules": schedules_experiment, "gan": gan_experiment}


def main():
    parser = arg_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(EXPERIMENTS), help="which experiment to run")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="its flags: `python experiments.py NAME --help`")
    args = parser.parse_args()
    EXPERIMENTS[args.which](args.flags)


if __name__ == "__main__":
    run_main(main)
