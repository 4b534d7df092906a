"""Benchmarks: measure and print the figures BENCHMARKS.md quotes. Not tests: nothing here asserts.

    python bench.py part1     # Part 1: the MSE floor of the 1-3-3-1 net, the default recipe over 20 seeds
    python bench.py unet      # the U-Net's training and inference throughput (and diffusers', if installed)
    python bench.py train     # Part 2: training speed, sampling time, sample quality (and diffusers')
    python bench.py reference # Part 2: make reference/checkpoint.pt (3000 steps, seed 0) and measure it
    python bench.py samplers  # Part 2: FID against network evaluations, each sampler, one checkpoint
    python bench.py targets   # Part 2: the default command's time and FID (issue targets)
    python bench.py throughput # Part 2: training steps/s: channels_last, attention, compile
    python bench.py autoencoder # Part 3's autoencoder: reconstruction error, FID of reconstructions
    python bench.py threads   # Part 2 under load: training and sampling speed, 1 or 2 threads or its own
    python bench.py curve     # Part 2: FID against training minutes over 3 seeds (a proxy, validated)

Run them on a quiet machine: other work on the same cores changes every timing.
"""
import argparse

from outputs import arg_parser, pick_threads, run_main, settings
import sys


# --- part1 -----------------------------------------------------------------------------------------

def bench_part1(argv):
    """Part 1: the held-out MSE floor of the 1-3-3-1 ReLU net, the default recipe over many seeds, and the time
    of one default run. The floor is the best of several long searches (the same recipe with many more restarts
    and hops, then a ten times longer polish) fitted directly to the held-out grid: each minimises the very number
    we report, so it bounds what training on samples can reach, as well as a search can."""
    import statistics
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import torch

    import part1_inversion as p1
    p = arg_parser(prog="bench.py part1", description=bench_part1.__doc__)
    p.add_argument("--seeds", type=int, default=20, help="seeds of the default recipe (default 20)")
    p.add_argument("--floor-searches", type=int, default=4, help="independent floor searches (default 4)")
    p.add_argument("--floor-restarts", type=int, default=32, help="spline starts per floor search (default 32)")
    p.add_argument("--floor-hops", type=int, default=100, help="hops per floor search (default 100)")
    p.add_argument("--n", type=int, default=p1.N_SAMPLES,
                   help=f"training pairs of the seeds, Adam and --data-limit-seeds (default {p1.N_SAMPLES})")
    p.add_argument("--adam-seeds", type=int, default=10, help="seeds of the plain-Adam contrast (default 10)")
    p.add_argument("--adam-steps", type=int, default=3000, help="Adam steps of that contrast (default 3000)")
    p.add_argument("--data-limit-seeds", type=int, default=0,
                   help="also run the floor's long search on the training pairs of this many seeds: how close can any "
                        "search get from --n pairs? (about a minute per seed; default 0, skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as the script does

    x_grid = torch.asin(p1.Y_GRID)
    floors = []
    for s in range(args.floor_searches):
        order = torch.randperm(len(p1.Y_GRID), generator=torch.Generator().manual_seed(1000 + s))
        start = time.perf_counter()
        model, _ = p1.train(p1.Y_GRID[order], x_grid[order], seed=1000 + s, restarts=args.floor_restarts,
                            hops=args.floor_hops)
        p1.fit(model, p1.Y_GRID, x_grid, [], steps=3000, history=100)  # polish 10x longer than the recipe does
        floors.append(p1.grid_error(model)["mse"])
        print(f"floor search {s}: held-out MSE {floors[-1]:.3e} ({time.perf_counter() - start:.0f} s)", flush=True)
    floor = min(floors)

    rows = []
    for seed in range(args.seeds):
        y, x = p1.make_data(args.n, torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        model, _ = p1.train(y, x, seed=seed)
        rows.append({"seed": seed, **p1.grid_error(model), "seconds": time.perf_counter() - start})
        print(f"seed {seed:2d}: held-out MSE {rows[-1]['mse']:.3e} = {rows[-1]['mse'] / floor:.2f} x floor, "
              f"max |error| {rows[-1]['max_abs_error']:.4f}, {rows[-1]['seconds']:.1f} s", flush=True)
    mses = [r["mse"] for r in rows]

    adam = []  # the textbook recipe, for contrast: PyTorch's default initialisation, full-batch Adam, lr 1e-2
    for seed in range(args.adam_seeds):
        y, x = p1.make_data(args.n, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        model = p1.make_mlp(p1.HIDDEN, "relu")
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(args.adam_steps):
            opt.zero_grad()
            ((model(y) - x) ** 2).mean().backward()
            opt.step()
        adam.append((p1.grid_error(model)["mse"], p1.grid_error(p1.straight_line(y, x))["mse"]))

    for seed in range(args.data_limit_seeds):  # the search of the floor, on what the default recipe sees
        y, x = p1.make_data(args.n, torch.Generator().manual_seed(seed))
        model, _ = p1.train(y, x, seed=seed, restarts=args.floor_restarts, hops=args.floor_hops)
        mse = p1.grid_error(model)["mse"]
        print(f"long search on the {args.n} training pairs of seed {seed}: held-out MSE {mse:.3e} "
              f"= {mse / floor:.2f} x floor", flush=True)

    with tempfile.TemporaryDirectory() as out:  # the whole command, as a student runs it: imports, training, figures
        start = time.perf_counter()
        subprocess.run([sys.executable, "part1_inversion.py", "--out", out], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parent)
        command_seconds = time.perf_counter() - start

    print(f"\nfloor (best of {args.floor_searches} searches on the held-out grid): {floor:.3e}"
          f"   [searches: {', '.join(f'{f:.2e}' for f in floors)}]")
    print(f"default recipe, {args.n} pairs, over {args.seeds} seeds: median {statistics.median(mses):.3e} "
          f"({statistics.median(mses) / floor:.2f} x floor), worst {max(mses):.3e} ({max(mses) / floor:.2f} x floor)")
    print(f"seeds missing 2 x floor: {sum(m > 2 * floor for m in mses)} of {args.seeds}; "
          f"missing 4 x floor: {sum(m > 4 * floor for m in mses)} of {args.seeds}")
    print(f"max |error|: median {statistics.median(r['max_abs_error'] for r in rows):.4f}, "
          f"worst {max(r['max_abs_error'] for r in rows):.4f}")
    print(f"training time per seed: median {statistics.median(r['seconds'] for r in rows):.1f} s, "
          f"worst {max(r['seconds'] for r in rows):.1f} s")
    if adam:
        print(f"plain Adam ({args.adam_steps} steps, default init) over {len(adam)} seeds: median "
              f"{statistics.median(m for m, _ in adam):.3e}; no better than a straight line on "
              f"{sum(m > 0.9 * line for m, line in adam)}; within 2 x floor on {sum(m <= 2 * floor for m, _ in adam)}")
    print(f"one default run, whole command (python part1_inversion.py): {command_seconds:.1f} s")
    y, x = p1.make_data(args.n, torch.Generator().manual_seed(0))
    line = p1.grid_error(p1.straight_line(y, x))["mse"]
    print(f"for scale, the least-squares straight line (seed 0): held-out MSE {line:.3e}")


# --- unet ------------------------------------------------------------------------------------------

def diffusers_peer(cfg, target_params):
    """diffusers' UNet2DModel shaped like `cfg` (same levels, blocks, attention levels, groups), with the
    width chosen so that its parameter count is the closest to `target_params`. None without diffusers."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    levels = len(cfg["channel_mults"])
    down = ["AttnDownBlock2D" if i in cfg["attention"] else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i in cfg["attention"] else "UpBlock2D" for i in reversed(range(levels))]

    def build(width):
        return UNet2DModel(sample_size=cfg["image_size"], in_channels=cfg["in_channels"],
                           out_channels=cfg["in_channels"], block_out_channels=[width * m for m in cfg["channel_mults"]],
                           layers_per_block=cfg["num_res_blocks"], down_block_types=down, up_block_types=up,
                           norm_num_groups=cfg["norm_groups"], attention_head_dim=None, dropout=cfg["dropout"])

    g = cfg["norm_groups"]
    counts = {w: sum(p.numel() for p in build(w).parameters()) for w in range(g, 2 * cfg["base_channels"] + 1, g)}
    width = min(counts, key=lambda w: abs(counts[w] - target_params))
    return build(width), f"diffusers UNet2DModel, widths {[width * m for m in cfg['channel_mults']]}"


def bench_unet(argv):
    """Training and inference throughput of our U-Net preset, and of diffusers' UNet2DModel at about the
    same parameter count, measured in turns in the same process (so both see the same machine load)."""
    import statistics
    import time

    import torch

    from unet import PRESETS, UNet
    p = arg_parser(prog="bench.py unet", description=bench_unet.__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="which unet.py preset to measure")
    p.add_argument("--batch", type=int, default=128, help="training batch size")
    p.add_argument("--infer-batch", type=int, default=64, help="batch size of the inference timing")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model, taken in turns; medians shown")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--channels-last", action="store_true", help="run both models in channels_last memory format")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dict(PRESETS[args.preset])
    ours = UNet(**cfg)
    models = {f'unet.py UNet(**PRESETS["{args.preset}"])': (ours, lambda m, x, t: m(x, t))}
    peer = diffusers_peer(cfg, sum(q.numel() for q in ours.parameters()))
    if peer is None:
        print("diffusers is not installed: its row is skipped (pip install diffusers to compare)")
    else:
        models[peer[1]] = (peer[0], lambda m, x, t: m(x, t).sample)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])

    def batch(n):
        return torch.randn(n, *shape).contiguous(memory_format=fmt), torch.randint(0, 1000, (n,))

    def train_step(model, call, opt):
        x, t = batch(args.batch)
        loss = (call(model, x, t) - x).pow(2).mean()     # the target does not matter for timing
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(model, call):
        with torch.no_grad():
            call(model, *batch(args.infer_batch))

    runs = {}
    for name, (model, call) in models.items():
        model.to(memory_format=fmt)
        runs[name] = dict(model=model, call=call, opt=torch.optim.AdamW(model.parameters(), lr=1e-4),
                          train=[], infer=[])
    for r in runs.values():                                # warm-up: first calls allocate and pick kernels
        train_step(r["model"], r["call"], r["opt"])
        infer(r["model"].eval(), r["call"])
    for _ in range(args.rounds):
        for r in runs.values():
            r["model"].train()
            t0 = time.perf_counter()
            for _ in range(2):
                train_step(r["model"], r["call"], r["opt"])
            r["train"].append(2 * args.batch / (time.perf_counter() - t0))
            r["model"].eval()
            t0 = time.perf_counter()
            for _ in range(4):
                infer(r["model"], r["call"])
            r["infer"].append(4 * args.infer_batch / (time.perf_counter() - t0))

    side = cfg["image_size"]
    print(f"U-Net throughput on {side}x{side}x{cfg['in_channels']}: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'channels_last' if args.channels_last else 'NCHW'}, "
          f"median of {args.rounds} rounds taken in turns")
    head = (f"{'model':46s} {'params':>9s}  {f'train img/s (b{args.batch})':>20s}  "
            f"{f'infer img/s (b{args.infer_batch})':>19s}  {'DDPM-1000, 64 img':>17s}")
    print(head)
    print("-" * len(head))
    for name, r in runs.items():
        n = sum(q.numel() for q in r["model"].parameters())
        train, inf = statistics.median(r["train"]), statistics.median(r["infer"])
        print(f"{name:46s} {n:9,d}  {train:20.0f}  {inf:19.0f}  {1000 * 64 / inf:15.0f} s")
    print("DDPM-1000 = the time 1000 network calls take for 64 images (the sampler's cost, from the inference rate).")


# --- train -----------------------------------------------------------------------------------------

def bench_train(argv):
    """Part 2 at the default budget: sample quality against training time, then sampling speed.

    Trains the default configuration in --segments equal slices of --minutes (each slice resumes the
    last, so the run is the same as one long one), and after each slice draws --n images with DDIM-50 and
    scores them with metrics.py (FID at N = --n against the 10,000 MNIST test digits). Then times 64 images
    with DDPM-1000 and with DDIM-50. If diffusers is installed, its UNet2DModel + DDPMScheduler (at about our
    parameter count) is then trained with the same recipe for the same wall-clock and measured the same way.
    Needs MNIST and the cached classifier in --data-dir.
    """
    import tempfile
    from pathlib import Path

    import torch

    import metrics
    import part2_diffusion

    p = arg_parser(prog="bench.py train", description=bench_train.__doc__)
    p.add_argument("--data-dir", default="data", help="folder with MNIST (and mnist-classifier.pt)")
    p.add_argument("--minutes", type=float, default=part2_diffusion.MINUTES, help="total training time")
    p.add_argument("--segments", type=int, default=4, help="how many times to stop and measure")
    p.add_argument("--n", type=int, default=1000, help="samples per measurement (FID depends on N)")
    p.add_argument("--peer-only", action="store_true", help="skip our model: train and measure only diffusers'")
    args = p.parse_args(argv)
    classifier, _ = metrics.load_or_train_classifier(args.data_dir)  # train it now, not inside a measurement
    print(f"torch threads: {torch.get_num_threads()} (the same for both runs, which take turns in this process)")
    head = (f"{'minutes':>8} {'steps':>6} {'steps/s':>8} {'img/s':>6} {'loss':>7} {'FID':>7} {'precision':>9} "
            f"{'recall':>6} {'classes':>7}   (N = {args.n}, DDIM-50)")

    def row(seconds, steps, loss, m):
        rate = steps / seconds
        print(f"{seconds / 60:8.1f} {steps:6d} {rate:8.2f} {rate * part2_diffusion.BATCH_SIZE:6.0f} {loss:7.4f} "
              f"{m['fid']:7.2f} {m['precision']:9.3f} {m['recall']:6.3f} {m['classes_present']:5d}/10", flush=True)

    if not args.peer_only:
        runs = Path(tempfile.mkdtemp(prefix="bench-train-"))
        run_dir = runs / "bench"
        print(f"ours: part2_diffusion.py defaults, run in {runs}\n{head}")
        seconds = 0.0
        for k in range(args.segments):
            s = part2_diffusion.run(settings(
                part2_diffusion.get_args, data_dir=args.data_dir,
                **(dict(resume=str(run_dir)) if k else dict(runs=str(runs), name="bench")),
                minutes=args.minutes / args.segments, sampler="ddim", sampling_steps=50,
                n=args.n))
            seconds += s["train_seconds"]
            row(seconds, s["steps"], s["final_loss"], s["metrics"])
        for sampler in ("ddpm", "ddim"):
            s = part2_diffusion.run(settings(
                part2_diffusion.get_args, data_dir=args.data_dir, sample_from=str(run_dir), n=64,
                sampler=sampler, sampling_steps=50))
            name = "DDPM-1000" if sampler == "ddpm" else "DDIM-50"
            print(f"sampling 64 images, {name}: {s['sampling_seconds']:.1f} s")
    train_peer(args, classifier, head, row)


def train_peer(args, classifier, head, row):
    """The peer: diffusers' UNet2DModel + DDPMScheduler, trained the way diffusers' docs train one, with
    part2_diffusion.py's recipe (data, batch, AdamW, warm-up, clipping, EMA, seed) and our linear schedule
    (beta 1e-4 to 0.02 over T = 1000), for the same --minutes in the same --segments; sampled with DDIM-50
    (diffusers' DDIMScheduler on the same timesteps as ours, eta 0, x_0 clipped) and scored like ours."""
    import copy
    import time

    import torch
    import torch.nn.functional as F
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        print("diffusers not installed: the peer run (UNet2DModel + DDPMScheduler) is skipped")
        return

    import data
    import metrics
    import part2_diffusion as p2
    from unet import PRESETS, UNet
    images, _, _ = data.load(p2.DATASET, args.data_dir, train=True)  # (60000, 1, 28, 28) in [-1, 1]
    real_test, _ = metrics.load_mnist(args.data_dir, train=False)
    cfg = PRESETS[p2.PRESET]
    ours = sum(q.numel() for q in UNet(**cfg).parameters())
    torch.manual_seed(0)  # part2_diffusion.py's default --seed
    model, name = diffusers_peer(cfg, ours)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=p2.LR, weight_decay=0.0)
    ddpm = DDPMScheduler(num_train_timesteps=p2.T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ddim = DDIMScheduler.from_config(ddpm.config, timestep_spacing="trailing")  # 999, 979, ..., 19, as ours
    ddim.set_timesteps(50)

    def sample(n):  # DDIM-50 from the EMA, in chunks of 256 from the same x_T as ours (seed 0)
        gen, chunks, start = torch.Generator().manual_seed(0), [], time.time()
        with torch.no_grad():
            for i in range(0, n, 256):
                x = torch.randn(min(256, n - i), *images.shape[1:], generator=gen)
                for t in ddim.timesteps:  # use_clipped_model_output: eps rederived from the clipped x_0, as ours
                    x = ddim.step(ema(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
                chunks.append(x)
        return torch.cat(chunks), time.time() - start

    print(f"peer: {name} ({sum(q.numel() for q in model.parameters()):,} parameters; ours {ours:,}) "
          f"+ DDPMScheduler, same recipe and wall-clock\n{head}")
    step, losses, seconds = 0, [], 0.0
    for _ in range(args.segments):
        model.train()
        start = time.time()
        while time.time() - start < 60 * args.minutes / args.segments:
            x0 = images[torch.randint(0, len(images), (p2.BATCH_SIZE,))]
            noise = torch.randn_like(x0)
            t = torch.randint(0, ddpm.config.num_train_timesteps, (len(x0),))
            loss = F.mse_loss(model(ddpm.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p2.GRAD_CLIP)
            for group in opt.param_groups:
                group["lr"] = p2.LR * min(1.0, (step + 1) / p2.WARMUP)
            opt.step()
            step += 1
            decay = min(p2.EMA_DECAY, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            losses.append(loss.item())
        seconds += time.time() - start
        row(seconds, step, sum(losses[-100:]) / len(losses[-100:]),
            metrics.evaluate(sample(args.n)[0], classifier, real_test))
    print(f"sampling 64 images, DDIM-50: {sample(64)[1]:.1f} s")


# --- reference ---------------------------------------------------------------------------------------

def bench_reference(argv):
    """Make the reference checkpoint, reference/checkpoint.pt, and measure it.

    Trains part2_diffusion.py's default recipe for --steps optimiser steps (seed 0; a step count, not a
    time box, so the same command gives the same weights on the same machine and thread count), drawing
    64 digits with DDPM-1000 at the end as the default run does. Then keeps only what sampling needs
    (runs.for_sampling) in --out, and from that file times 64 digits with DDIM-50 and scores
    1000 DDIM-50 digits with metrics.py (FID at N = 1000 against the 10,000 MNIST test digits).
    --ddpm-fid also scores 1000 DDPM-1000 digits (about 20 minutes on a 2-core CPU).
    Needs MNIST in --data-dir; trains and caches metrics.py's classifier there first if it is missing.
    """
    import json
    import tempfile
    from pathlib import Path

    import torch

    import metrics
    import part2_diffusion
    import runs
    from outputs import atomic_write

    p = arg_parser(prog="bench.py reference", description=bench_reference.__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder with MNIST (default data)")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--out", default="reference", help="folder of the checkpoint (default reference)")
    p.add_argument("--ddpm-fid", action="store_true", help="also score 1000 DDPM-1000 samples")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="skip training: cut down and measure this finished run of the same recipe")
    args = p.parse_args(argv)
    metrics.load_or_train_classifier(args.data_dir)  # train it now, not inside a measurement
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    if args.run:
        run = Path(args.run)
    else:
        run = Path(tempfile.mkdtemp(prefix="bench-reference-")) / "reference"
        part2_diffusion.run(settings(
            part2_diffusion.get_args, data_dir=args.data_dir, runs=str(run.parent),
            name="reference", steps=args.steps, minutes=600, seed=0))
    trained = json.loads((run / "summary.json").read_text())  # --run: a finished run's own
    ckpt = runs.load_checkpoint(run)
    out = Path(args.out)
    atomic_write(out / "checkpoint.pt", lambda tmp: torch.save(runs.for_sampling(ckpt), tmp))

    def sample(sampler, n):
        return part2_diffusion.run(settings(
            part2_diffusion.get_args, data_dir=args.data_dir, sample_from=str(out),
            sampler=sampler, n=n))

    ddim64 = sample("ddim", 64)
    rows = [("training steps", trained["steps"]),
            ("training time", f"{trained['train_seconds']:.0f} s"),
            ("steps per second", f"{trained['steps'] / trained['train_seconds']:.2f}"),
            ("64 images, DDPM-1000", f"{trained['sampling_seconds']:.1f} s"),
            ("64 images, DDIM-50", f"{ddim64['sampling_seconds']:.1f} s"),
            ("checkpoint size", f"{(out / 'checkpoint.pt').stat().st_size / 1e6:.2f} MB")]
    for sampler in ["ddim"] + (["ddpm"] if args.ddpm_fid else []):
        m = sample(sampler, 1000)
        f = m["metrics"]
        name = "DDIM-50" if sampler == "ddim" else "DDPM-1000"
        rows.append((f"1000 images, {name}", f"{m['sampling_seconds']:.1f} s"))
        rows.append((f"FID (N = 1000, {name})", f"{f['fid']:.2f}; precision {f['precision']:.3f}, "
                     f"recall {f['recall']:.3f}, classes {f['classes_present']}/10, "
                     f"confidence {f['confidence']:.3f}, KL(U) {f['kl_uniform']:.3f}"))
    print(f"\nreference checkpoint: {out / 'checkpoint.pt'} (the full run is in {run})")
    for what, value in rows:
        print(f"{what:28s} {value}")


# --- samplers ---------------------------------------------------------------------------------------

def bench_samplers(argv):
    """FID against network evaluations for each sampler, on one checkpoint.

    For every --samplers name and every --nfe K, draws --n images from the checkpoint in RUN_DIR
    (default: the reference checkpoint) with part2_diffusion.py's --sampler NAME --sampling-steps K,
    seed 0, and scores them with metrics.py (FID at N = --n against the 10,000 MNIST test digits).
    "ddpm" with K < T is Algorithm 2 on K respaced steps; K = T is Algorithm 2 itself. Prints a table
    of FID, precision, recall, KL from uniform, mean confidence, the share of samples the classifier
    reads with confidence above 0.9, and the time to draw 64 and --n images.
    """
    from pathlib import Path

    import numpy as np
    import torch

    import metrics
    import part2_diffusion

    p = arg_parser(prog="bench.py samplers", description=bench_samplers.__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="reference", help="run folder with the checkpoint")
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpm-solver"])
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 250],
                   help="network evaluations (sampling steps) per image")
    p.add_argument("--n", type=int, default=1000, help="images per measurement")
    p.add_argument("--data-dir", default="data", help="folder with MNIST and its classifier")
    args = p.parse_args(argv)
    classifier, _ = metrics.load_or_train_classifier(args.data_dir)
    print(f"checkpoint: {args.run}; torch threads: {torch.get_num_threads()}; N = {args.n}")
    head = (f"{'sampler':>11} {'NFE':>5} {'FID':>7} {'prec.':>6} {'recall':>6} {'KL(U)':>6} "
            f"{'conf.':>6} {'>0.9':>5} {'64 img':>7} {f'{args.n} img':>8}")
    print(head + "\n" + "-" * len(head), flush=True)
    for name in args.samplers:
        for k in args.nfe:
            flags = dict(sample_from=args.run, sampler=name, sampling_steps=k, seed=0,
                         data_dir=args.data_dir)
            small = part2_diffusion.run(settings(part2_diffusion.get_args, n=64, **flags))
            drawn = settings(part2_diffusion.get_args, n=args.n, **flags)
            big = part2_diffusion.run(drawn)
            folder = Path(args.run) / "samples" / part2_diffusion.sample_folder_name(drawn)
            samples = np.load(folder / "samples.npy")
            sure = (metrics.predict(classifier, metrics.as_images(samples)).max(axis=1) > 0.9)
            m = big["metrics"]
            print(f"{name:>11} {k:5d} {m['fid']:7.2f} {m['precision']:6.3f} {m['recall']:6.3f} "
                  f"{m['kl_uniform']:6.3f} {m['confidence']:6.3f} {sure.mean():5.3f} "
                  f"{small['sampling_seconds']:6.1f}s {big['sampling_seconds']:7.1f}s", flush=True)


# --- targets ----------------------------------------------------------------------------------------

def loss_variant(p2, name):
    """For A/B tests of the loss: part2_diffusion's training_loss (L_simple, Eq. 14, "eps"), or
    min-SNR-gamma weighting (Hang et al. 2023), or the v target (Salimans & Ho 2022, Eq. 9 of the
    progressive distillation paper) with, for v, an eps_theta that turns v back into eps. Returns
    (loss_fn, make_eps_theta), which part2_diffusion.run takes."""
    import torch
    import torch.nn.functional as F

    from schedule import Schedule
    if name == "eps":
        return p2.training_loss, p2.eps_theta
    if name.startswith("min-snr-"):
        gamma = float(name[len("min-snr-"):])

        def weighted(model, sched, x0, y=None):
            t = torch.randint(0, sched.T, (len(x0),), device=x0.device)
            eps = torch.randn_like(x0)
            per_image = (F.mse_loss(model(sched.q_sample(x0, t, eps), t, y), eps,
                                    reduction="none").mean(dim=(1, 2, 3)))
            snr = sched.snr.to(x0)[t]
            return (per_image * snr.clamp(max=gamma) / snr).mean()
        return weighted, p2.eps_theta
    if name != "v":
        raise SystemExit(f"unknown --loss {name}: eps, min-snr-GAMMA or v")

    def coefs(sched, t, like):  # sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), shaped like x
        return (sched._at(sched.sqrt_alphas_cumprod, t, like),
                sched._at(sched.sqrt_one_minus_alphas_cumprod, t, like))

    def v_loss(model, sched, x0, y=None):
        t = torch.randint(0, sched.T, (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        a, s = coefs(sched, t, x0)
        v = a * eps - s * x0                         # v = sqrt(ab) eps - sqrt(1 - ab) x0
        return F.mse_loss(model(sched.q_sample(x0, t, eps), t, y), v)

    sched = Schedule(p2.SCHEDULE, p2.T)

    def v_eps_theta(model, meta, args, y):
        net = p2.eps_theta(model, meta, args, y)

        def eps_from_v(x_t, t):                      # eps = sqrt(ab) v + sqrt(1 - ab) x_t
            a, s = coefs(sched, t, x_t)
            return a * net(x_t, t) + s * x_t
        return eps_from_v
    return v_loss, v_eps_theta


def bench_targets(argv):
    """Part 2's targets, from the default command: the whole run's time, and its samples' quality.

    Runs `python part2_diffusion.py` with its defaults (train for --minutes, draw 64 images with the
    default sampler, figures) in a fresh folder and times all of it; then draws --n images from that
    run with the default sampler and scores them with metrics.py. --loss and --extra-ema are A/B
    tests that part2_diffusion.run takes as arguments (a loss function, averages kept beside the
    run's own EMA); nothing of part2_diffusion.py is replaced.
    """
    import tempfile
    import time
    from pathlib import Path

    import torch

    import metrics
    import part2_diffusion
    from runs import load_safely

    p = arg_parser(prog="bench.py targets", description=bench_targets.__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=part2_diffusion.MINUTES)
    p.add_argument("--n", type=int, default=1000, help="images to score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="data", help="folder with MNIST and its classifier")
    p.add_argument("--loss", default="eps", help="eps (L_simple, the default), min-snr-GAMMA "
                   "(eps target, weights min(SNR, GAMMA) / SNR, Hang et al. 2023) or v (the "
                   "v target of Salimans & Ho 2022, turned back into eps for sampling)")
    p.add_argument("--score-only", metavar="RUN_DIR",
                   help="train nothing: draw and score --n images from a run made before")
    p.add_argument("--extra-ema", type=float, nargs="*", default=[], metavar="DECAY",
                   help="also keep EMAs of these decays in the same run, and score each")
    args = p.parse_args(argv)
    loss_fn, make_eps_theta = loss_variant(part2_diffusion, args.loss)
    metrics.load_or_train_classifier(args.data_dir)  # cached: every draw is scored
    loss_fn, extra = track_extra_emas(loss_fn, args.extra_ema)
    first, whole = None, None
    if args.score_only:  # a run trained before (its 64-image draw failed, say): score it only
        run = Path(args.score_only)
    else:
        runs = Path(tempfile.mkdtemp(prefix="bench-targets-"))
        start = time.time()
        first = part2_diffusion.run(settings(part2_diffusion.get_args, data_dir=args.data_dir,
                                             runs=str(runs), name="run", minutes=args.minutes,
                                             seed=args.seed), loss_fn, make_eps_theta)
        whole, run = time.time() - start, runs / "run"
    print(f"\ndefault command, {args.minutes:g} min, seed {args.seed}, "
          f"{torch.get_num_threads()} torch threads, loss {args.loss}; run in {run}")
    if first is not None:
        print(f"  {'whole run (training, 64 images, figures)':42s} {whole / 60:.1f} min")
        what = f"64 images, {first['sampler']}-{first['sampling_steps']}"
        print(f"  {what:42s} {first['sampling_seconds']:.1f} s")
    score_run(part2_diffusion, run, args, "", make_eps_theta)
    for decay, ema in extra.items():  # the same run, sampled from an EMA of another decay
        ckpt = load_safely(run / "checkpoint.pt")
        ckpt["ema"] = ema.state_dict()
        ckpt["meta"] = dict(ckpt["meta"], ema_decay=decay)
        (run.parent / f"ema{decay}").mkdir()
        torch.save(ckpt, run.parent / f"ema{decay}" / "checkpoint.pt")
        score_run(part2_diffusion, run.parent / f"ema{decay}", args, f"EMA {decay}: ",
                  make_eps_theta)


def track_extra_emas(loss_fn, decays):
    """Average the weights at each of `decays` too, beside the run's own EMA, in the same run:
    a paired comparison of EMA decays that costs one training. The averages are updated as each
    step's loss is computed, with the weights the previous step left (so they lag the run's own
    EMA by one step, of thousands). Returns (a loss_fn for part2_diffusion.run, {decay: EMA})."""
    import copy

    import part2_diffusion
    extra, steps = {}, []

    def loss_and_averages(model, sched, x0, y=None):
        steps.append(1)
        for d in decays:
            if d not in extra:
                extra[d] = copy.deepcopy(getattr(model, "module", model)).eval()
            part2_diffusion.update_ema(extra[d], model, len(steps) - 1, d)
        return loss_fn(model, sched, x0, y)
    return (loss_and_averages if decays else loss_fn), extra


def score_run(p2, run, args, label, make_eps_theta):
    """Draw --n images from the run's EMA with the default sampler and print their scores."""
    scores = curve_score(p2, run, args.n, p2.SAMPLER, p2.SAMPLING_STEPS[p2.SAMPLER], args.seed,
                         args, make_eps_theta)
    for what, value in [("training steps", scores["steps"]),
                        (f"FID (N = {args.n})", f"{scores['fid']:.2f}"),
                        ("precision, recall", f"{scores['precision']:.3f}, {scores['recall']:.3f}"),
                        ("share with confidence > 0.9", f"{scores['sure']:.3f}"),
                        ("classes present, KL from uniform",
                         f"{scores['classes']}/10, {scores['kl']:.3f}")]:
        print(f"  {label + what:42s} {value}")


# --- throughput ------------------------------------------------------------------------------------

def bench_throughput(argv):
    """Part 2's training step (training_loss and gradient_step at the default batch) in steps per
    second, for the default U-Net and for variants that could make it faster: channels_last memory
    format, no attention, torch.compile (its compile time shown apart). Each variant is timed in
    turns with the others, so that all see the same machine; medians shown."""
    import copy
    import statistics
    import time

    import torch

    import part2_diffusion as p2
    from schedule import Schedule
    from unet import PRESETS, UNet

    p = arg_parser(prog="bench.py throughput", description=bench_throughput.__doc__)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    p.add_argument("--steps", type=int, default=30, help="training steps per round")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes)")
    args = p.parse_args(argv)
    threads = pick_threads()
    sched = Schedule("linear", 1000)
    torch.manual_seed(0)
    x0 = torch.randn(p2.BATCH_SIZE, 1, 28, 28).clamp(-1, 1)
    base = UNet(**PRESETS["cpu"])
    variants = {"default (NCHW, attention at 7x7)": (base, torch.contiguous_format),
                "channels_last": (copy.deepcopy(base), torch.channels_last),
                "no attention": (UNet(**dict(PRESETS["cpu"], attention=[])),
                                 torch.contiguous_format)}
    runs = {}
    for name, (model, fmt) in variants.items():
        runs[name] = dict(model=model.to(memory_format=fmt), fmt=fmt, rates=[],
                          opt=torch.optim.AdamW(model.parameters(), lr=1e-4))
    if args.compile:
        model = copy.deepcopy(base)
        runs["torch.compile"] = dict(model=torch.compile(model), fmt=torch.contiguous_format,
                                     rates=[], opt=torch.optim.AdamW(model.parameters(), lr=1e-4))

    def steps(r, n):
        x = x0.contiguous(memory_format=r["fmt"])
        for _ in range(n):
            p2.gradient_step(r["model"], r["opt"], p2.training_loss(r["model"], sched, x), 1e-4)

    for name, r in runs.items():  # warm-up: the first calls allocate, pick kernels, compile
        t0 = time.perf_counter()
        steps(r, 3)
        r["warmup"] = time.perf_counter() - t0
    for _ in range(args.rounds):
        for r in runs.values():
            t0 = time.perf_counter()
            steps(r, args.steps)
            r["rates"].append(args.steps / (time.perf_counter() - t0))
    print(f"Part 2's training step, batch {p2.BATCH_SIZE}, cpu preset: torch {torch.__version__}, "
          f"{threads} threads, median of {args.rounds} rounds of {args.steps} steps, in turns")
    for name, r in runs.items():
        print(f"  {name:36s} {statistics.median(r['rates']):6.2f} steps/s   "
              f"(first 3 steps: {r['warmup']:.1f} s)")


# --- autoencoder -------------------------------------------------------------------------------------

def bench_autoencoder(argv):
    """Part 3's autoencoder (autoencoder.py): train it (or load the cached one from --data-dir), then its
    reconstruction error on the 10,000 test digits and, the best any latent model can do, the FID of the
    reconstructions of 1000 held-out training digits (train[50000:51000]) next to the FID of those digits."""
    import time

    import torch

    import autoencoder
    import data
    import metrics

    p = argparse.ArgumentParser(prog="bench.py autoencoder", description=bench_autoencoder.__doc__)
    p.add_argument("--data-dir", default="data", help="MNIST, and the cached models (default data)")
    args = p.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}")
    start = time.time()
    model = autoencoder.load_or_train(args.data_dir)
    print(f"autoencoder ready in {time.time() - start:.0f} s (training included if it was not cached)")
    test, _, _ = data.load("mnist", args.data_dir, train=False)
    print(f"reconstruction MSE per pixel, test digits: {autoencoder.reconstruction_error(model, test):.4f}")
    classifier, _ = metrics.load_or_train_classifier(args.data_dir, log=lambda *_: None)
    train, _, _ = data.load("mnist", args.data_dir, train=True)
    held = train[50000:51000]
    with torch.no_grad():
        rebuilt = model.decode(model.encode(held)).clamp(-1, 1)
    for name, x in [("held-out digits", held), ("their reconstructions", rebuilt)]:
        m = metrics.evaluate(x, classifier, test)
        print(f"{name:22s} FID {m['fid']:6.2f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}")


# --- threads under load ------------------------------------------------------------------------------

LOADS = {  # what runs beside the measured command: (commands, start at half of training?)
    "quiet": ([], False),
    "yes from the start": ([["yes"]], False),
    "yes from half-way": ([["yes"]], True),
    "a second training from half-way": ([["TRAIN"]], True),
    "the test suite from half-way": ([["SUITE"]], True),
    "two other trainings": ([["TRAIN"], ["TRAIN"]], False),
}


def bench_threads(argv):
    """Part 2's default command, shortened, from a fresh process under each load of LOADS, at one
    thread, at two (OMP_NUM_THREADS) and at the script's own choice: training steps/s and sampling
    network calls/s (DDIM-25 on 256 images, one batch). Loads: `yes` (one busy core), another
    training (two threads of its own), the suite's schedule and sampler tests (many short torch
    processes and threads), started with the command or at half of its training."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    p = arg_parser(prog="bench.py threads", description=bench_threads.__doc__)
    p.add_argument("--seconds", type=float, default=30, help="training seconds of each run")
    p.add_argument("--data-dir", default="data", help="MNIST")
    p.add_argument("--loads", nargs="*", default=list(LOADS), choices=list(LOADS))
    p.add_argument("--threads", nargs="*", default=["1", "2", "own"])
    args = p.parse_args(argv)
    root, python = Path(__file__).resolve().parent, sys.executable
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    train = [python, str(root / "part2_diffusion.py"), "--data-dir", args.data_dir, "--runs",
             str(work / "load"), "--minutes", "10", "--n", "1", "--sampler", "ddim",
             "--sampling-steps", "1"]
    suite = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_schedule.py",
             "tests/test_samplers.py", "tests/test_unet.py"]
    print(f"Part 2, {args.seconds:g} s of training then DDIM-25 on 256 images; "
          f"{os.cpu_count()} cores; steps/s, calls/s", flush=True)
    for load in args.loads:
        commands, half = LOADS[load]
        for threads in args.threads:
            env = dict(os.environ, MPLBACKEND="Agg")
            env.pop("OMP_NUM_THREADS", None)
            if threads != "own":
                env["OMP_NUM_THREADS"] = threads
            name = f"run-{len(list(work.glob('run-*')))}"
            cmd = [python, str(root / "part2_diffusion.py"), "--data-dir", args.data_dir, "--runs",
                   str(work), "--name", name, "--minutes", str(args.seconds / 60), "--n", "256",
                   "--sampler", "ddim", "--sampling-steps", "25"]
            started = []

            def start_load():
                for c in commands:
                    c = {"TRAIN": train, "SUITE": suite}.get(c[0], c)
                    started.append(subprocess.Popen(
                        c, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env=dict(os.environ, MPLBACKEND="Agg"), start_new_session=True))
            if not half:
                start_load()
            run = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            if half:
                time.sleep(5 + args.seconds / 2)  # ~5 s of start-up and data loading first
                start_load()
            run.wait()
            for proc in started:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            summary = json.loads((work / name / "summary.json").read_text())
            train_rate = summary["steps"] / summary["train_seconds"]
            calls_rate = summary["sampling_steps"] / summary["sampling_seconds"]
            print(f"  {load:34s} threads {threads:4s} {train_rate:6.2f} steps/s "
                  f"{calls_rate:6.2f} calls/s", flush=True)


# --- curve -----------------------------------------------------------------------------------------

def bench_curve(argv):
    """Learning per CPU minute, judged by a curve over seeds. For each seed, the default command
    (train --minutes in a fresh folder, draw its 64 images), its checkpoint copied about every
    --every minutes of training. Then each copy is scored by a cheap proxy (N = --n images,
    DDIM---proxy-steps), and some by the full score (N = --full-n, the default sampler): the last
    copy of every seed, and with --validate every copy of the first seed, to check that the proxy
    ranks checkpoints as the full score does. --extra-ema DECAY:GAMMA keeps more averages in the
    same runs, decay min(DECAY, (1 + step) / (GAMMA + step)) (the default is 0.999:10), each scored
    by the proxy: a paired comparison of EMA warm-ups. --flag NAME=VALUE sets a flag of
    part2_diffusion.py (a lever: --flag batch_size=32); --unet NAME=VALUE changes the U-Net
    (--unet base_channels=12 channel_mults=1,2,2). Prints every score as it comes, then the mean
    and spread over seeds; writes them all to --out."""
    import json
    import tempfile
    from pathlib import Path

    import torch

    import metrics
    import part2_diffusion as p2

    p = arg_parser(prog="bench.py curve", description=bench_curve.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=p2.MINUTES)
    p.add_argument("--every", type=float, default=2.0, help="minutes of training between copies")
    p.add_argument("--n", type=int, default=500, help="images the proxy scores")
    p.add_argument("--proxy-steps", type=int, default=20, help="DDIM steps of the proxy")
    p.add_argument("--full-n", type=int, default=1000,
                   help="images the full score draws (0: the proxy alone)")
    p.add_argument("--validate", action="store_true",
                   help="the full score on every copy of the first seed too")
    p.add_argument("--extra-ema", nargs="*", default=[], metavar="DECAY:GAMMA")
    p.add_argument("--flag", nargs="*", default=[], metavar="NAME=VALUE")
    p.add_argument("--loss", default="algorithm1", metavar="NAME",
                   help="the training loss, a lever: algorithm1 (the default), logit-normal:M:S "
                        "(t / T = sigmoid(z), z ~ N(M, S^2)), nearest-of:K (each image's eps is the "
                        "nearest of K draws)")
    p.add_argument("--unet", nargs="*", default=[], metavar="NAME=VALUE",
                   help="a U-Net that is no preset: the cpu preset with these arguments of UNet "
                        "changed (a list as 1,2,4; an empty list as attention=)")
    p.add_argument("--data-dir", default="data", help="MNIST and its classifier")
    p.add_argument("--out", default="curve.json", help="where the scores go (JSON)")
    p.add_argument("--score-only", metavar="DIR", help="train nothing: score the copies in DIR")
    args = p.parse_args(argv)
    defaults = vars(p2.get_args([]))
    flags = {k: number(v) if defaults[k] is None else type(defaults[k])(v)  # None: settled later
             for k, v in (f.split("=", 1) for f in args.flag)}
    emas = [tuple(float(x) for x in e.split(":")) for e in args.extra_ema]
    curve_loss(p2, args.loss)  # a wrong --loss stops here, before any training
    unet = curve_unet(args.unet)  # and a wrong --unet
    metrics.load_or_train_classifier(args.data_dir)
    work = Path(args.score_only or tempfile.mkdtemp(prefix="bench-curve-"))
    if not args.score_only:
        runs = []
        for seed in args.seeds:
            runs.append(curve_training(p2, work, seed, args, flags, emas, unet))
            print(json.dumps(runs[-1]), flush=True)
            (work / "runs.json").write_text(json.dumps(runs))
    results = dict(args=vars(args), threads=torch.get_num_threads(),
                   runs=json.loads((work / "runs.json").read_text()))
    for run in results["runs"]:
        for i, copy in enumerate(run["copies"]):
            full = args.full_n > 0 and (i == len(run["copies"]) - 1
                                        or (args.validate and run is results["runs"][0]))
            for folder in copy["folders"]:
                copy.setdefault("proxy", {})[folder] = curve_score(
                    p2, work / folder, args.n, "ddim", args.proxy_steps, run["seed"], args)
            if full:
                copy["full"] = curve_score(p2, work / copy["folders"][0], args.full_n,
                                           p2.SAMPLER, p2.SAMPLING_STEPS[p2.SAMPLER],
                                           run["seed"], args)
            print(json.dumps(copy), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    curve_report(results)


def curve_training(p2, work, seed, args, flags, emas, unet):
    """One seed's default command; the checkpoint is copied just after a save, about every --every
    minutes of training, with the extra averages of the same step. Returns its steps, times and
    the copies' folders. With --unet (`unet`: UNet's arguments), the run is a --resume of a
    checkpoint at step 0 that holds that U-Net (see curve_start)."""
    import copy as copying
    import shutil
    import time

    import torch

    every = 100  # steps between saves: a copy is at most this many steps late
    run_dir, calls, extras, copies = work / f"seed{seed}", [], {}, []

    def snapshot(step, minutes):
        folders = [f"seed{seed}-step{step}"]
        (work / folders[0]).mkdir()
        shutil.copy(run_dir / "checkpoint.pt", work / folders[0] / "checkpoint.pt")
        for (decay, gamma), ema in extras.items():
            ckpt = torch.load(work / folders[0] / "checkpoint.pt", weights_only=True)
            ckpt["ema"] = ema.state_dict()
            folders.append(f"{folders[0]}-ema{decay:g}-{gamma:g}")
            (work / folders[-1]).mkdir()
            torch.save(ckpt, work / folders[-1] / "checkpoint.pt")
        copies.append(dict(step=step, minutes=round(minutes, 2), folders=folders))

    def loss_fn(model, sched, x0, y=None):
        step = len(calls)  # steps done: `model` holds their weights, the run's EMA has them too
        calls.append(time.time())
        for (decay, gamma) in emas if step else []:  # as update_ema, with GAMMA for its 10
            net = getattr(model, "module", model)
            if (decay, gamma) not in extras:  # not setdefault: that would copy at every step
                extras[decay, gamma] = copying.deepcopy(net).eval()
            ema = extras[decay, gamma]
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), net.parameters()):
                    p_ema.lerp_(p, 1 - min(decay, (1 + step) / (gamma + step)))
        if step % every == 0 and calls[-1] - calls[0] >= 60 * args.every * (len(copies) + 1):
            snapshot(step, (calls[-1] - calls[0]) / 60)
        return base_loss(model, sched, x0, y)

    base_loss = curve_loss(p2, args.loss)
    where = dict(name=f"seed{seed}") if not unet else \
        dict(resume=curve_start(p2, run_dir, seed, args, flags, unet))
    summary = p2.run(settings(p2.get_args, data_dir=args.data_dir, runs=str(work), seed=seed,
                              minutes=args.minutes, ckpt_every=every, **where,
                              **{k: v for k, v in flags.items() if not unet or k != "preset"}),
                     loss_fn)
    snapshot(summary["steps"], summary["train_seconds"] / 60)  # the averages miss its last step
    return dict(seed=seed, steps=summary["steps"], threads=torch.get_num_threads(), flags=flags,
                loss=args.loss, unet=unet, train_minutes=round(summary["train_seconds"] / 60, 2),
                copies=copies, sampling_seconds=summary.get("sampling_seconds"))


def curve_loss(p2, name):
    """The training loss of --loss: Algorithm 1's (part2_diffusion.training_loss), or one lever on
    it, L_simple (Eq. 14) all the same. logit-normal:M:S draws t / T = sigmoid(z), z ~ N(M, S^2),
    in place of t ~ Uniform (Esser et al. 2024's logit-normal; M < 0 skews it away from the large t
    where x_t is nearly pure noise and the loss is flat early). nearest-of:K draws K eps for each
    image and keeps the one nearest to it (Li et al. 2024's immiscible diffusion, the k-nearest
    form): the noise each image is pushed to depends less on chance."""
    import torch
    import torch.nn.functional as F

    if name == "algorithm1":
        return p2.training_loss
    kind, *params = name.split(":")
    if (kind, len(params)) not in (("logit-normal", 2), ("nearest-of", 1)) or not all(
            v.lstrip("-").replace(".", "", 1).isdigit() for v in params):
        raise SystemExit(f"bench.py curve: --loss {name!r} is not algorithm1, logit-normal:M:S "
                         "or nearest-of:K (M, S, K numbers)")
    params = [float(v) for v in params]

    def loss(model, sched, x0, y=None):
        B = len(x0)
        if kind == "logit-normal":
            z = params[0] + params[1] * torch.randn(B, device=x0.device)
            t = (torch.sigmoid(z) * sched.T).long().clamp(0, sched.T - 1)
            eps = torch.randn_like(x0)
        else:
            t = torch.randint(0, sched.T, (B,), device=x0.device)
            eps = torch.randn(int(params[0]), *x0.shape, device=x0.device)  # (K, B, C, H, W)
            nearest = (eps - x0).flatten(2).square().sum(2).argmin(0)       # (B,)
            eps = eps[nearest, torch.arange(B, device=x0.device)]
        return F.mse_loss(model(sched.q_sample(x0, t, eps), t, y), eps)   # Eq. 4, Eq. 14
    return loss


def curve_unet(pairs):
    """--unet's NAME=VALUE pairs as UNet's keyword arguments ({}: the preset itself), checked by
    building the U-Net; a wrong pair stops with one line, before any training."""
    from unet import PRESETS, UNet

    unet = {}
    try:
        for pair in pairs:
            name, _, value = pair.partition("=")
            unet[name] = [int(v) for v in value.split(",") if v] if name in (
                "channel_mults", "attention") else number(value)
        UNet(**dict(PRESETS["cpu"], **unet))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"bench.py curve: --unet {' '.join(pairs)} builds no U-Net: {e}")
    return unet


def curve_start(p2, run_dir, seed, args, flags, unet):
    """A run folder whose checkpoint holds a new U-Net (the cpu preset changed by `unet`) at step 0,
    for --resume: part2_diffusion.py has a flag for the presets only, and --resume takes any
    U-Net. One step of the default command writes the folder; its network, average, optimiser,
    step and history are then replaced by a fresh start of the other U-Net (same seed)."""
    import torch

    from runs import load_safely, save_checkpoint
    from unet import UNet

    p2.run(settings(p2.get_args, data_dir=args.data_dir, runs=str(run_dir.parent),
                    name=run_dir.name, seed=seed, steps=1, sampler="ddim", sampling_steps=1, n=1,
                    **flags))
    ckpt = load_safely(run_dir / "checkpoint.pt")
    config = ckpt["meta"]["model_config"] = dict(ckpt["meta"]["model_config"], **unet)
    torch.manual_seed(seed)
    model = UNet(**config)
    opt = torch.optim.AdamW(model.parameters(), lr=ckpt["meta"]["lr"], weight_decay=0.0)
    ckpt.update(model=model.state_dict(), ema=model.state_dict(), optimizer=opt.state_dict(),
                step=0, history=[])
    save_checkpoint(run_dir / "checkpoint.pt", ckpt)
    return str(run_dir)


def curve_score(p2, folder, n, sampler, steps, seed, args, make_eps_theta=None):
    """Draw n images from the run's EMA and score them (metrics.py): FID and the rest, the
    seconds the drawing took, the run's training steps."""
    import numpy as np

    import metrics
    drawn = settings(p2.get_args, data_dir=args.data_dir, sample_from=str(folder), n=n,
                     seed=seed, sampler=sampler, sampling_steps=steps)
    summary = p2.run(drawn, make_eps_theta=make_eps_theta or p2.eps_theta)
    samples = np.load(folder / "samples" / p2.sample_folder_name(drawn) / "samples.npy")
    classifier = metrics.cached_classifier(args.data_dir)
    sure = (metrics.predict(classifier, metrics.as_images(samples)).max(axis=1) > 0.9).mean()
    m = summary["metrics"]
    return dict(fid=round(m["fid"], 2), precision=round(m["precision"], 3),
                recall=round(m["recall"], 3), sure=round(float(sure), 3),
                classes=m["classes_present"], kl=round(m["kl_uniform"], 4),
                seconds=round(summary["sampling_seconds"], 1), steps=summary["steps"])


def number(text):
    """A flag's value from the command line: an int, a float, or else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def spearman(a, b):
    """Spearman's rank correlation of two lists (no ties expected)."""
    import numpy as np
    ra, rb = (np.argsort(np.argsort(x)) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def curve_report(results):
    """The tables: each copy's scores; the proxy against the full score; mean and spread."""
    import numpy as np
    runs = results["runs"]
    print(f"\n{'seed':>4} {'step':>6} {'min':>5}  proxy FID (N = {results['args']['n']}, "
          f"DDIM-{results['args']['proxy_steps']}) by average   full FID")
    for run in runs:
        for c in run["copies"]:
            proxies = "  ".join(f"{k.split('-', 2)[-1] if '-ema' in k else 'default'} "
                                f"{v['fid']:.2f}" for k, v in c["proxy"].items())
            full = f"{c['full']['fid']:.2f}" if "full" in c else ""
            print(f"{run['seed']:>4} {c['step']:>6} {c['minutes']:>5.1f}  {proxies}   {full}")
    pairs = [(c["proxy"][c["folders"][0]]["fid"], c["full"]["fid"])
             for run in runs for c in run["copies"] if "full" in c]
    if len(pairs) >= 3:
        print(f"\nproxy against full score on {len(pairs)} copies: Spearman "
              f"{spearman(*zip(*pairs)):.3f}")
    for i in range(min(len(r["copies"]) for r in runs)):
        for k in range(len(runs[0]["copies"][i]["folders"])):
            fids = [list(r["copies"][i]["proxy"].values())[k]["fid"] for r in runs]
            name = runs[0]["copies"][i]["folders"][k].split("-", 2)[-1]
            print(f"copy {i + 1} ({np.mean([r['copies'][i]['minutes'] for r in runs]):.1f} min), "
                  f"{name if '-ema' in runs[0]['copies'][i]['folders'][k] else 'default'}: "
                  f"proxy FID mean {np.mean(fids):.2f}, range {min(fids):.2f}-{max(fids):.2f}")
    finals = [r["copies"][-1]["full"] for r in runs if "full" in r["copies"][-1]]
    if not finals:
        return
    print(f"\nfull score at the end, mean over {len(runs)} seeds: FID "
          f"{np.mean([f['fid'] for f in finals]):.2f} (each: "
          f"{', '.join(str(f['fid']) for f in finals)}); confidence > 0.9: "
          f"{', '.join(str(f['sure']) for f in finals)}; KL(U): "
          f"{', '.join(str(f['kl']) for f in finals)}; steps "
          f"{', '.join(str(r['steps']) for r in runs)}")


BENCHES = {"part1": bench_part1, "unet": bench_unet, "train": bench_train, "reference": bench_reference,
           "samplers": bench_samplers, "targets": bench_targets, "throughput": bench_throughput,
           "autoencoder": bench_autoencoder, "threads": bench_threads,
           "curve": bench_curve}


def main():
    parser = arg_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark to run")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="its flags: `python bench.py NAME --help`")
    args = parser.parse_args()
    BENCHES[args.which](args.flags)


if __name__ == "__main__":
    run_main(main)
