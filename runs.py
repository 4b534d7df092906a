"""Where a run lives and what happens around its training loop: the folder, claimed so that two runs
never share one; the checkpoints; and Run, the housekeeping of each training step.

    out, run = train_in_folder(args, "ddpm", fit)  # runs/ddpm, runs/ddpm-2, ... or --name/--resume
    with Run(out, args, meta, nets, ckpt) as run:  # inside fit: resume, budget, signals, saves
        while run.goes_on():
            ...one step of the algorithm...
            run.step_done(loss)
    ckpt = load_checkpoint(folder)                 # checked before any work

part2_diffusion.py, part3_text_to_image.py and gan_baseline.py keep their runs this way. A student
can skip this file: it is housekeeping (exclusive folder creation, --overwrite, resume, signals, the
divergence guard, one-line errors for damaged or hand-edited checkpoints), not diffusion. Every file
goes through outputs.atomic_write.
"""
import contextlib
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import ddp
import plots
from outputs import STOP_SIGNALS, Progress, UserError, atomic_write, check_space, check_writable, \
    lock_folder, memory_bytes, note_stop, remove_orphans, save_bytes, save_json
from schedule import MAX_T, SCHEDULES, Schedule
from unet import UNet

# --- run folders ----------------------------------------------------------------------------------

RUN_FILES = ("checkpoint.pt", "samples.png", "samples.npy", "trajectory.png", "forward.png",
             "loss.png", "config.json", "summary.json", "prompts.png")


def claim_run_folder(args, prefix="ddpm"):
    """A new folder under --runs, created here by an exclusive mkdir: of two runs started at once
    with one --name, the second finds it taken and stops. Returns the folder and the folders this
    made (itself, and --runs if it was missing), removed if the run fails before writing (unclaim).

    With --overwrite an existing run's folder is taken instead; its files are removed only when the
    new run is ready to write its first one (clear_old_run), so a folder never mixes two runs."""
    check_name(args.name)
    made = [] if os.path.exists(args.runs) else [Path(args.runs)]  # no error on a bad path
    runs = check_writable(args.runs, "--runs")
    name, k = args.name or prefix, 1
    while True:
        folder = runs / name
        try:
            folder.mkdir(parents=True)
            lock_folder(folder)
            return folder, [folder] + made
        except FileExistsError:
            pass
        if args.name is None:  # a default name: try the next one
            k += 1
            name = f"{prefix}-{k}"
            continue
        if folder.is_symlink():  # --overwrite would empty the folder it points to, anywhere
            raise UserError(f"{folder} is a symbolic link, not a run folder; choose another "
                            "--name")
        if not folder.is_dir():
            raise UserError(f"{folder} is a file, not a run folder; choose another --name")
        if not args.overwrite:
            raise UserError(f"{folder} already exists; pass --overwrite to replace the run in it, "
                            "or choose another --name")
        holds_a_run = any((folder / f).exists() for f in ("config.json", "checkpoint.pt"))
        if any(p.name != ".lock" for p in folder.iterdir()) and not holds_a_run:
            raise UserError(f"{folder} holds no run (no config.json or checkpoint.pt), so "
                            "--overwrite will not empty it; choose another --name")
        lock_folder(folder)
        return folder, made


def check_name(name):
    """--name is one folder under --runs: not empty, no separator, not "." or "..", so that no run
    lands outside --runs."""
    if name is None:
        return
    seps = {os.sep, os.altsep or os.sep, "/"}
    if not name.strip() or name in (".", "..") or any(c in name for c in seps):
        raise UserError(f"--name {name!r} is not a folder name: give one name, without "
                        f"{' or '.join(sorted(seps))} (--runs chooses where it goes)")


def unclaim(made):
    """After a failure before any work: remove the folders claim_run_folder made, if still empty."""
    for folder in made:
        if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".lock"}:
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()


def clear_old_run(folder):
    """--overwrite: remove the earlier run's files, and its samples/ from --sample-from. Other files
    (notes of yours) are left alone."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    if (folder / "samples").is_symlink():
        (folder / "samples").unlink()
    else:
        shutil.rmtree(folder / "samples", ignore_errors=True)
    remove_orphans(folder, RUN_FILES)


# --- checkpoints ----------------------------------------------------------------------------------

CHECKPOINT_KEYS = {"meta", "model", "ema", "step", "history"}
META_KEYS = {"dataset", "requested", "fallback", "model_config", "schedule", "conditional",
             "p_uncond", "batch_size", "lr", "ema_decay"}


def save_checkpoint(path, state):
    save_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(run_dir, resumable=False):
    """The checkpoint in run_dir, checked as far as it can be before any work: its entries, and that
    its schedule and its U-Net can be built (a hand-edited file fails here, in one line); with
    resumable, that it holds what --resume needs."""
    ckpt = read_checkpoint(run_dir)
    if resumable:
        check_resumable(ckpt, run_dir)
    path = Path(run_dir) / "checkpoint.pt"
    check_schedule(ckpt["meta"], path)
    build_model(ckpt["meta"]["model_config"], ckpt["ema"], path)
    return ckpt


def load_safely(path):
    """torch.load that never runs code from the file. A checkpoint holds tensors, numbers, strings,
    lists and dicts only; torch's weights_only loader rebuilds those and refuses anything else
    unread, so a file handed over by someone else cannot run a pickled payload here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # it names a function or class to call: never loaded
            raise UserError(f"refused {path}: it holds Python objects besides tensors, numbers, "
                            "strings, lists and dicts, and loading them could run code; use a "
                            "checkpoint written by this lab") from None
        raise UserError(f"cannot read checkpoint {path} (UnpicklingError); "
                        "it is damaged or not ours") from None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); "
                        "it is damaged or not ours") from None


def read_checkpoint(run_dir, keys=CHECKPOINT_KEYS, meta_keys=META_KEYS,
                    script="part2_diffusion.py"):
    """The checkpoint in run_dir, read, with its entries and its meta's entries checked: a missing
    file, a damaged one or one of another script is one line. The model is the caller's to build
    (Part 2: load_checkpoint; Part 3 stores a text encoder and an autoencoder too)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give the folder of a run that trained "
                        "at least once")
    ckpt = load_safely(path)
    present = set(ckpt) if isinstance(ckpt, dict) else set()
    missing = sorted(keys - present)
    if not missing:
        meta = ckpt["meta"]
        present = set(meta) if isinstance(meta, dict) else set()
        missing = [f"meta[{k!r}]" for k in sorted(meta_keys - present)]
    if missing:
        raise UserError(f"{path} is not a {script} checkpoint (missing {', '.join(missing)})")
    check_entries(ckpt, path)
    return ckpt


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v, least=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


# What each entry of a checkpoint, and of its meta, must be: a hand-edited file is refused here, in
# one line, rather than fail in the middle of the work. Entries not named here are the caller's.
ENTRIES = {
    "step": ("an integer >= 0", _count),
    "history": ("a list of numbers (the DCGAN: a dict of such lists)", lambda v: (
        isinstance(v, list) and all(map(_number, v))) or (isinstance(v, dict) and all(
            isinstance(h, list) and all(map(_number, h)) for h in v.values()))),
    "rng": ("torch's random-number state (a uint8 tensor)", lambda v: torch.is_tensor(v)
            and v.dtype == torch.uint8 and v.dim() == 1),
    "optimizer": ("an optimiser's state (a dict)", lambda v: isinstance(v, dict)
                  and {"state", "param_groups"} <= set(v)),
    "model": ("weights (a dict of tensors)", lambda v: isinstance(v, dict)),
    "ema": ("weights (a dict of tensors)", lambda v: isinstance(v, dict)),
    "meta": ("a dict", lambda v: isinstance(v, dict)),
}
META_ENTRIES = {
    "dataset": ("a name", lambda v: isinstance(v, str)),
    "requested": ("a name", lambda v: isinstance(v, str)),
    "fallback": ("True or False", lambda v: isinstance(v, bool)),
    "conditional": ("True or False", lambda v: isinstance(v, bool)),
    "model_config": ("a dict", lambda v: isinstance(v, dict)),
    "text_config": ("a dict", lambda v: isinstance(v, dict)),
    "schedule": ("a dict", lambda v: isinstance(v, dict)),
    "p_uncond": ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    "batch_size": ("an integer >= 1", lambda v: _count(v, 1)),
    "lr": ("a positive number", lambda v: _number(v) and v > 0),
    "ema_decay": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "seed": ("an integer >= 0", _count),
}


def check_entries(ckpt, path):
    """Every entry of ENTRIES and META_ENTRIES that the checkpoint holds has its type and range."""
    bad = [f"{k} ({what})" for k, (what, ok) in ENTRIES.items() if k in ckpt and not ok(ckpt[k])]
    bad += [f"meta[{k!r}] ({what})" for k, (what, ok) in META_ENTRIES.items()
            if isinstance(ckpt.get("meta"), dict) and k in ckpt["meta"]
            and not ok(ckpt["meta"][k])]
    if bad:
        raise UserError(f"{path} has been edited or damaged: these entries are not what they "
                        f"should be: {'; '.join(bad)}; use a checkpoint written by this lab")


def check_resumable(ckpt, run_dir):
    if "optimizer" not in ckpt:
        raise UserError(f"{run_dir} holds weights for sampling only (no optimiser state), so it "
                        f"cannot be resumed; sample from it with --sample-from {run_dir}")
    if "rng" not in ckpt:
        raise UserError(f"{run_dir}/checkpoint.pt lacks its random-number state ('rng'), so it "
                        f"cannot be resumed exactly; sample from it with --sample-from {run_dir}")


def for_sampling(ckpt):
    """A checkpoint cut down to what sampling needs: the EMA weights, the configuration, the step
    and the loss history; no optimiser state or RNG state, so it cannot be resumed. Its "model"
    entry is the EMA weights themselves (torch.save stores a shared tensor once), so it is a third
    of the full size."""
    return dict(meta=ckpt["meta"], model=ckpt["ema"], ema=ckpt["ema"], step=ckpt["step"],
                history=ckpt["history"])


def check_schedule(meta, path):
    stored = meta["schedule"] if isinstance(meta["schedule"], dict) else {}
    name, T = stored.get("name"), stored.get("T")
    if name not in SCHEDULES or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise UserError(f"{path} names a schedule this lab cannot build ({meta['schedule']!r}); "
                        f"it needs a name in {', '.join(SCHEDULES)} and 1 <= T <= {MAX_T}")


def build_schedule(meta, path):
    check_schedule(meta, path)
    return Schedule(meta["schedule"]["name"], meta["schedule"]["T"])


def build_model(model_config, state_dict, path):
    try:
        with torch.device("meta"):  # its size first, with no memory taken
            weights = sum(p.numel() for p in UNet(**model_config).parameters())
        memory = memory_bytes()
        if memory and 4 * weights > memory / 4:
            raise UserError(f"the model_config in {path} asks for {4 * weights / 1e9:.1f} GB of "
                            f"weights, too much for this machine's {memory / 1e9:.0f} GB; use "
                            "a checkpoint of this lab's presets")
        model = UNet(**model_config)
    except UserError:
        raise
    except Exception as e:  # a hand-edited configuration can fail in any way: input, not our bug
        reason = (str(e).splitlines() or [""])[0]
        raise UserError(f"the model_config in {path} does not build a U-Net "
                        f"({type(e).__name__}: {reason})") from None
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError):
        raise UserError(f"the weights in {path} do not fit the model configuration "
                        "stored with them")
    return model


# --- a training run: its folder, budget, signals, checkpoints and divergence guard ---------------

def train_in_folder(args, prefix, fit, loss_figure=None):
    """Train into --resume's folder (what a killed run left half-written removed first) or a new one
    claimed under --runs: fit(folder, overwrite) trains and returns its Run (or a tuple that starts
    with it); then loss.png, and a line on how to go on if a stop signal stopped it. Returns
    (folder, what fit returned). A run that fails before writing anything leaves no empty folder."""
    resume = getattr(args, "resume", None)  # the DCGAN has no --resume
    if not ddp.is_main():  # torchrun: only rank 0 touches the run folder
        result = fit(None, False)
        run = result[0] if isinstance(result, tuple) else result
        if run.stopped:
            note_stop(run.stopped)
        return None, result
    if resume:
        out, made = check_writable(resume, "--resume"), []
        lock_folder(out)
        remove_orphans(out, RUN_FILES)
    else:
        out, made = claim_run_folder(args, prefix)
    threads = torch.get_num_threads()
    print(f"run folder: {out}; {threads} torch thread{'s' if threads > 1 else ''}"
          + (f" in each of {ddp.size()} processes" if ddp.size() > 1 else ""), file=sys.stderr)
    try:
        result = fit(out, out not in made and not resume)
    except BaseException:
        unclaim(made)
        raise
    run = result[0] if isinstance(result, tuple) else result
    (loss_figure or plots.loss_curve)(run.history, out / "loss.png")
    if run.stopped:
        note_stop(run.stopped)  # run_main's exit status: 128 + the signal
        if any(Path(out).resolve().is_relative_to(folder) for folder in _scratch):
            print(f"interrupted at step {run.step}", file=sys.stderr)  # its folder goes too
        elif hasattr(args, "resume"):
            print(f"interrupted: checkpoint saved at step {run.step} in {out}; continue "
                  f"training with --resume {out}, or draw samples with --sample-from {out}",
                  file=sys.stderr)
        else:  # the DCGAN: no --resume, no --sample-from
            print(f"interrupted: checkpoint saved at step {run.step} in {out}", file=sys.stderr)
    return out, result


_scratch = []  # the temporary folders of scratch(), removed when it ends


@contextlib.contextmanager
def scratch(prefix):
    """A temporary folder for runs that a script drives and then deletes (experiments.py): an
    interrupted run in it is not offered for --resume, since its folder is about to go."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        _scratch.append(Path(folder).resolve())
        try:
            yield folder
        finally:
            _scratch.remove(Path(folder).resolve())


def write_samples(out, samples, summary, title, data_dir, grid=None):
    """samples.npy, samples.png (of `grid`: by default all the samples) and summary.json into out,
    then a line of what was drawn and one of the scores summary["metrics"] holds (or how to score
    them). samples: (n, C, H, W) in [-1, 1]. Returns the summary."""
    atomic_write(out / "samples.npy", lambda tmp: np.save(tmp, samples.numpy().astype(np.float32)))
    plots.sample_grid(samples if grid is None else grid, out / "samples.png", title)
    save_json(out / "summary.json", summary)
    print(f"sampled {len(samples)} images in {summary['sampling_seconds']} s; figures and "
          f"samples.npy in {out}")
    m = summary["metrics"]
    if m and m["n"] >= 1000:
        print(f"FID {m['fid']:.2f} (N = {m['n']}), precision {m['precision']:.3f}, "
              f"recall {m['recall']:.3f}, classes present {m['classes_present']}/10, "
              f"mean confidence {m['confidence']:.3f}")
    elif m:  # FID's estimate is biased upwards, and noisy, on few samples
        print(f"no FID at N = {m['n']} (too few: draw 1000 with --sample-from {out.parent} "
              f"--n 1000); classes present {m['classes_present']}/10, mean confidence "
              f"{m['confidence']:.3f}")
    elif summary["dataset"] == "mnist":
        print(f"to score them: python metrics.py {out / 'samples.npy'} --data-dir {data_dir}")
    return summary


def sample_folder(run_dir, name):
    """run_dir/samples/name, for a --sample-from draw, with what a killed draw left removed; the run
    folder is locked, and a samples/ that leads out of it (a symbolic link) is refused."""
    run_dir = Path(run_dir)
    check_writable(run_dir, "--sample-from")
    lock_folder(run_dir)
    out = run_dir / "samples" / name
    for folder in (out.parent, out):
        if folder.is_symlink():
            raise UserError(f"{folder} is a symbolic link: samples are only written inside the "
                            "run's own folder; remove the link")
    check_writable(out, "--sample-from")
    remove_orphans(out, RUN_FILES)
    return out


@contextlib.contextmanager
def unfinished_exercise(out):
    """In the student edition, a sampler whose exercise is not written yet raises
    NotImplementedError("Exercise N: ..."): after a finished training that is one line, not a
    traceback; the checkpoint is saved, and --sample-from draws once the exercise is done."""
    try:
        yield
    except NotImplementedError as e:
        if not str(e).startswith("Exercise"):
            raise
        raise UserError(f"the training is saved in {out}, but sampling needs {e}; once it is "
                        f"written, draw with --sample-from {out}") from None


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C (SIGINT), SIGTERM (kill, docker stop, SLURM) and SIGHUP (a closing terminal) ask
    training to stop: the current step ends, a checkpoint is saved, and the run is not lost.
    Yields a list of the signals asked, in order (empty until a stop was asked for)."""
    asked = []
    old = {sig: signal.signal(sig, lambda signum, frame: asked.append(signum))
           for sig in STOP_SIGNALS}
    try:
        yield asked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Run:
    """Everything around the steps of a training loop, so that the loop itself is the algorithm:

        with Run(folder, args, meta, nets, ckpt) as run:
            while run.goes_on():    # --steps and --minutes left, no stop signal (any rank)
                ...one step...
                run.step_done(loss) # NaN guard, history, a checkpoint every --ckpt-every, progress
        # leaving the block normally saves the last checkpoint

    folder: where checkpoint.pt goes (None: this process writes nothing, as torchrun's other
    ranks). nets: the modules and optimisers a checkpoint stores, by entry name; a resumed run
    (ckpt) loads them back with the step, the history and the random-number state. works(): do
    the weights still give finite output? Asked before each save, so that a checkpoint only ever
    holds weights that work. extra: more entries for every checkpoint (Part 3: its autoencoder).
    advice: what the message of a NaN loss suggests."""

    def __init__(self, folder, args, meta, nets, ckpt=None, works=None, extra=None,
                 advice="try a lower --lr", history=None):
        self.folder, self.meta, self.nets, self.works = folder, meta, nets, works
        self.extra, self.advice = extra or {}, advice
        self.every = getattr(args, "ckpt_every", None) or float("inf")  # else at the end only
        self.step, self.saved = 0, None
        self.history = [] if history is None else history
        if ckpt is not None:
            for name, net in nets.items():
                net.load_state_dict(ckpt[name])
            torch.set_rng_state(ckpt["rng"])
            self.step, self.history, self.saved = ckpt["step"], ckpt["history"], ckpt["step"]
            self.history = {k: list(v) for k, v in self.history.items()} \
                if isinstance(self.history, dict) else list(self.history)
        self.steps, self.stopped = args.steps, False
        if folder is not None:
            check_space(folder, self.megabytes(), "this run's checkpoints")
        self.meter = Progress(args.steps, "training", done=self.step, seconds=60 * args.minutes,
                              show=ddp.is_main())

    def megabytes(self):
        """What the run writes, roughly: two checkpoints (the old one stays until the new one is
        whole), each 4 bytes for every weight and Adam's two moments; the extra entries; figures."""
        weights = sum(p.numel() for net in self.nets.values() if isinstance(net, torch.nn.Module)
                      for p in net.parameters())
        moments = sum(2 * p.numel() for net in self.nets.values()
                      if isinstance(net, torch.optim.Optimizer)
                      for group in net.param_groups for p in group["params"])
        extra = sum(t.numel() for v in self.extra.values()
                    for t in (v.values() if isinstance(v, dict) else [v]) if torch.is_tensor(t))
        return 2 * 4 * (weights + moments + extra) / 1e6 + 2

    def __enter__(self):
        self._signals = stop_requests()
        self._asked = self._signals.__enter__()
        return self

    def __exit__(self, kind, value, tb):
        try:  # the last save happens while a signal still only asks to stop: it cannot cut it
            if kind is None:
                self.meter.close()
                self.save()
        finally:
            self.stopped = self._asked[0] if self._asked else False
            self._signals.__exit__(kind, value, tb)

    def goes_on(self):
        self.stopped = self._asked[0] if self._asked else False
        return self.step < self.steps and not ddp.any_rank(self.stopped or
                                                              self.meter.out_of_time())

    def used(self):
        """The fraction of the budget spent, by steps or by minutes, whichever is further along."""
        return self.meter.used()

    def seconds(self):
        return self.meter.seconds()

    def trained(self):
        """What a summary says of the training: its steps, and the seconds of this session."""
        return dict(steps=self.step, train_seconds=self.seconds())

    def step_done(self, loss):
        """One step is done, with its loss: a tensor, or a dict of floats (the DCGAN's D and G)."""
        losses = loss if isinstance(loss, dict) else {None: loss}
        values = {k: v.item() if torch.is_tensor(v) else float(v) for k, v in losses.items()}
        self.step += 1
        if not all(np.isfinite(v) for v in values.values()):
            said = " and ".join(f"{v}" + (f" ({k.upper()})" if k else "")
                                for k, v in values.items())
            raise UserError(f"the loss became {said} at step {self.step}; {self.advice} "
                            f"({self.kept()})")
        if isinstance(self.history, dict):
            for k, v in values.items():
                self.history[k].append(v)
            note = "  ".join(f"{k.upper()} {np.mean(h[-100:]):.3f}"
                             for k, h in self.history.items())
        else:
            self.history.append(ddp.mean(values[None]))  # of the whole batch, over all processes
            note = f"loss {np.mean(self.history[-50:]):.4f}"
        if self.step % self.every == 0:
            self.save()
        self.meter.tick(note)

    def kept(self):
        if self.saved is None:
            return "no checkpoint was saved"
        return f"the last good checkpoint, from step {self.saved}, is kept in {self.folder}"

    def save(self):
        if self.folder is None:  # torchrun: rank 0 alone writes
            return
        nets = {k: getattr(net, "module", net) for k, net in self.nets.items()}  # DDP's wrapper
        if self.works is not None and not all(self.works(nets[k]) for k in ("model", "ema")):
            raise UserError(f"the weights diverged by step {self.step}; {self.advice} "
                            f"({self.kept()})")
        state = {k: net.state_dict() for k, net in nets.items()}
        save_checkpoint(self.folder / "checkpoint.pt", dict(
            meta=self.meta, **state, step=self.step, history=self.history,
            rng=torch.get_rng_state(), **self.extra))
        self.saved = self.step


def divergence_probe(x0, y, sched, device):
    """works() for Run: does a network give finite output on a fixed batch? The first 16 of x0
    (B, ...), each noised at its own t, with noise from a generator of its own, so that testing
    never moves the run's random numbers (--resume stays exact); y: their conditions, or None.
    Finite weights are not enough: after a divergence they can be finite and still give NaN."""
    x0 = x0[:16].cpu()
    t = torch.linspace(0, sched.T - 1, len(x0)).long()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t, t = sched.q_sample(x0, t, eps).to(device), t.to(device)
    y = None if y is None else y[:16].to(device)

    @torch.no_grad()
    def works(net):
        was_training = net.training
        out = net.eval()(x_t, t, y)
        net.train(was_training)
        return bool(torch.isfinite(out).all())
    return works


def watched(eps_theta, meter, guidance=None):
    """eps_theta(x_t, t) as a sampler calls it, with each output checked (finite) and each call
    counted on the progress line `meter`."""
    def checked(x_t, t):
        eps_hat = finite(eps_theta(x_t, t), guidance)
        meter.tick()
        return eps_hat
    return checked


def finite(eps_hat, guidance=None):
    """The network's output, if it is finite: broken weights stop sampling at once, not after
    minutes of drawing NaN images. guidance: the --guidance scale, if one is set: a large one can
    be the cause rather than the weights."""
    if not torch.isfinite(eps_hat).all():
        if guidance is not None:
            raise UserError(f"the guided output is not finite (NaN or infinity) with --guidance "
                            f"{guidance:g}, which magnifies the model's output: try a smaller "
                            "--guidance; if that fails too, the weights are broken (train again "
                            "with a lower --lr)")
        raise UserError("the model's output is not finite (NaN or infinity): its weights are "
                        "broken, as after a diverged training; train it again with a lower --lr")
    return eps_hat
