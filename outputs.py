"""Writing results safely: atomic files, run folders, and the one-line error for user mistakes.

Every file the lab writes (figures, checkpoints, samples, JSON) goes through `atomic_write`: the
data is written to a temporary file in the same folder and then renamed over the target. A rename
within one folder is atomic, so an interrupted run (Ctrl-C, a crash, a full disk) leaves either the
old file or the new one, never half of one.

Scripts raise `UserError` for mistakes a user can fix (a bad flag, a missing file, a full disk);
`run_main` turns it into one line on stderr and exit status 2, with no traceback. Bugs still raise
normally. Every script builds its command line with `arg_parser`: a bad flag is one such line too.
"""
import argparse
import errno
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)  # the only way to read the umask is to set it; put it straight back


class UserError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, in one line."""


class DiskFull(UserError):
    """No space left for a file. A script may catch it to add how much space it needs in all."""


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))   # EDQUOT: over the user's quota
NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)                # a read-only folder or disk


def atomic_write(path, write):
    """Call `write(tmp_path)` to fill a temporary file, then rename it to `path`.

    `write` receives a str path (so torch.save, np.save, fig.savefig all work) and must create the
    file. The suffix of `path` is kept on the temporary name, because savefig and np.save infer the
    format from it. A full disk or a read-only folder is a UserError naming `path`; an old file is
    kept.
    """
    path = Path(path)
    try:
        _write_then_rename(path, write)
    except OSError as e:
        if e.errno in DISK_FULL:
            free = shutil.disk_usage(path.parent).free / 1e6 if path.parent.is_dir() else 0
            raise DiskFull(f"the disk is full: cannot write {path} ({free:.0f} MB free there)") \
                from None
        if e.errno in NOT_ALLOWED:
            raise UserError(f"cannot write {path} ({e.strerror}); choose a writable place") \
                from None
        raise


def _write_then_rename(path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                               suffix=f".tmp{path.suffix}")
    os.close(fd)
    # mkstemp makes owner-only files; give the result the usual permissions
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        write(tmp)
        # Force the bytes onto the disk before the rename: otherwise a power cut can leave the new
        # name pointing at an empty file, and the old file already gone.
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_orphans(folder):
    """Delete the temporary files that a writer killed outright (kill -9, a crash) left in `folder`.
    Only atomic_write's own names match: .<stem>.<random>.tmp<suffix>."""
    for tmp in Path(folder).glob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def save_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(path, write)


def save_figure(fig, path, dpi=120):
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def check_writable(folder, flag="--out"):
    """Create `folder` if needed and prove we can write there, before any long computation starts.
    `flag` is the command-line option that chooses the folder, named in the error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder} ({e.strerror}); "
                        f"choose another with {flag}")
    return folder


def arg_parser(**kwargs):
    """An argparse.ArgumentParser whose own complaints (an invalid choice, a missing value, an
    unknown flag) are UserErrors: one line and exit 2 like any other mistake, not a usage block."""
    parser = argparse.ArgumentParser(**kwargs)

    def fail(message):
        raise UserError(message)
    parser.error = fail
    return parser


def finite_float(text):
    """argparse type for float flags: a number, and not NaN or infinity. float() accepts "nan" and
    "inf", and NaN passes every range check, since every comparison with it is False."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def settings(get_args, **flags):
    """A script's args from keyword arguments instead of a command line, for the scripts that drive
    others (experiments.py, and the instructors' benchmarks):
    settings(part2_diffusion.get_args, minutes=1, sampler="ddim") is `--minutes 1 --sampler ddim`.
    A name that is not one of the script's flags is an error, so renaming a flag cannot break a
    caller silently."""
    args = get_args([])
    unknown = sorted(set(flags) - set(vars(args)))
    if unknown:
        raise TypeError(f"no flag for {', '.join(unknown)} in {get_args.__module__}.py")
    vars(args).update(flags)
    return args


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that states each default once: "(default: X)" is added only when the help text does
    not already name the default, and never for flags whose default is None or False (nothing to
    say)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --- threads --------------------------------------------------------------------------------------

def idle_cores(seconds=0.25):
    """How many of the machine's cores sat idle over a short look, from Linux's /proc/stat (the
    first line sums every core: idle and iowait time against all time). None where there is no
    /proc/stat (macOS, Windows)."""
    def times():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)
    try:
        idle0, total0 = times()
        time.sleep(seconds)
        idle1, total1 = times()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(total1 - total0, 1)


def pick_threads():
    """Set torch's thread count to the idle cores (at least one, at most torch's own default), and
    return it. Torch's threads wait for each other at every layer, so one thread on a core that
    another job is using holds all of them up: beside one busy core, two threads trained at half
    the speed of one (measured on a 2-core laptop). OMP_NUM_THREADS, if set, decides instead."""
    import torch  # here: this file is imported by the grading plugin, which needs no torch
    if "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() == 1:
        return torch.get_num_threads()  # nothing to decide
    idle = idle_cores()
    if idle is not None:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), math.floor(idle + 0.5))))
    return torch.get_num_threads()


# --- the progress line, and how a script ends -----------------------------------------------------

_line_open = False  # is a progress line on stderr waiting for its newline?


def progress(text):
    """Redraw the one-line progress display on stderr (a carriage return goes back to its start)."""
    global _line_open
    print(f"\r{text} ", end="", file=sys.stderr, flush=True)
    _line_open = True


def end_progress():
    """End the progress line, so that whatever is printed next starts on a line of its own."""
    global _line_open
    if _line_open:
        print(file=sys.stderr)
        _line_open = False


class Progress:
    """A progress line on stderr, redrawn at most once a second: steps done of `total`, the rate and
    the time left. done: where the count starts (a resumed run's steps). seconds: the time limit of
    time-boxed work, or None; the time left is then to whichever end comes first. show: False for
    a line that is never drawn."""

    def __init__(self, total, what, done=0, seconds=None, show=True):
        self.total, self.what, self.done, self.first, self.limit = total, what, done, done, seconds
        self.show = show
        self.start, self.last = time.time(), 0.0  # 0: the first step is shown at once

    def seconds(self):
        return round(time.time() - self.start, 1)

    def out_of_time(self):
        return self.limit is not None and time.time() - self.start >= self.limit

    def used(self):
        """The fraction of the budget spent: steps done of `total`, or time of the limit,
        whichever is further along."""
        by_time = 0.0 if self.limit is None else (time.time() - self.start) / self.limit
        return max(self.done / self.total, by_time)

    def tick(self, note=""):
        """One more step done; `note` (the loss, say) is shown beside the count."""
        self.done += 1
        now = time.time()
        if self.show and (now - self.last > 1 or self.done == self.total):
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate
            if self.limit is not None:
                left = min(left, self.limit - (now - self.start))
            progress(f"{self.what}: step {self.done}/{self.total}  {note + '  ' if note else ''}"
                     f"{rate:.2f} steps/s  ETA {max(left, 0) / 60:.1f} min")
            self.last = now

    def close(self):
        end_progress()


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def run_main(main):
    """Run `main()`; turn a UserError into 'error: ...' on stderr and exit status 2.

    SIGTERM (from `kill`, `docker stop`, SLURM, a closing terminal) is treated like Ctrl-C: either
    ends the script with one line and exit status 130 (128 + SIGINT), not a traceback. atomic_write
    never leaves half a file behind; a script that can save its work first (training) catches both
    itself."""
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        main()
    except UserError as e:
        end_progress()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        end_progress()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old)
