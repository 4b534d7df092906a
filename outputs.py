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
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl  # POSIX: the run-folder lock; elsewhere folders go unlocked
except ImportError:
    fcntl = None


_UMASK = os.umask(0)
os.umask(_UMASK)  # the only way to read the umask is to set it; put it straight back


class UserError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, in one line."""


class DiskFull(UserError):
    """No space left for a file. A script may catch it to add how much space it needs in all."""


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))   # EDQUOT: over the user's quota
NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS,               # a read-only folder or disk,
               errno.ENAMETOOLONG, errno.EFBIG)                       # a too long path, ulimit -f


def atomic_write(path, write):
    """Call `write(tmp_path)` to fill a temporary file, then rename it to `path`.

    `write` receives a str path (so torch.save, np.save, fig.savefig all work) and must create the
    file. The suffix of `path` is kept on the temporary name, because savefig and np.save infer the
    format from it. A full disk or a read-only folder is a UserError naming `path`; an old file is
    kept.
    """
    path = Path(path)
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, /dev/stdout: never replaced
        raise UserError(f"{path} is not a regular file (a folder or a device); "
                        "give the path of a file to write")
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


def save_bytes(path, dump):
    """atomic_write of what dump(file) writes (torch.save, np.save), serialised in memory first and
    then written from Python: a full disk then raises OSError(ENOSPC), which atomic_write reports in
    one line (torch's own writer would raise a RuntimeError)."""
    def write(tmp):
        buffer = io.BytesIO()
        dump(buffer)
        Path(tmp).write_bytes(buffer.getbuffer())
    atomic_write(path, write)


_ORPHAN = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]+\.tmp(?P<suffix>\.[A-Za-z0-9]+)?")


def remove_orphans(folder, names):
    """Delete the temporary files that a writer killed outright (kill -9, a crash) left in `folder`.
    Only atomic_write's own names of the files in `names` (what the lab writes there) match:
    .<stem>.<random>.tmp<suffix>; a file of yours with a similar name is left alone. Call it
    holding the folder's lock (lock_folder), so that no other process is writing them."""
    for tmp in Path(folder).glob(".*.tmp*"):
        m = _ORPHAN.fullmatch(tmp.name)
        if m and m["stem"] + (m["suffix"] or "") in names and tmp.is_file() \
                and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)


_locks = {}  # folder -> the open lock file this process holds


def lock_folder(folder):
    """Take `folder`'s exclusive lock (an OS lock on folder/.lock, released by the kernel when this
    process ends, even by kill -9), so that two processes never write one run folder; another
    process holding it is refused in one line naming its PID. Held until release_locks (run_main
    calls it at the end); taking a lock this process holds already is a no-op."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if fcntl is None or key in _locks:
        return
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise UserError(f"cannot lock {folder} ({e.strerror}); choose a writable place") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: by another process, or by another open file of this one
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{folder} is in use by another process (PID {holder}); wait for it to "
                        "end, or stop it, before starting another here") from None
    except OSError:  # a file system without locks (some network disks): go on unlocked
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _locks[key] = fd


def release_locks():
    """Let go of every folder this process locked."""
    while _locks:
        os.close(_locks.popitem()[1])


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


def check_space(folder, megabytes, what):
    """Before the work: refuse a folder whose disk has less free space than `what` needs."""
    free = shutil.disk_usage(folder).free / 1e6
    if free < megabytes:
        raise UserError(f"{folder} has {free:.0f} MB free, and {what} needs about {megabytes:.0f} "
                        "MB; free some space, or choose another place")


def check_output_file(path, flag="--out"):
    """Before any work: `path` can be written (its folder is writable) and is a file, not a folder
    or a device such as /dev/stdout, which atomic_write would refuse only after the work."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{flag} {path} is not a regular file (a folder or a device); give the "
                        "path of a file to write")
    check_writable(path.parent, flag)
    return path


def arg_parser(**kwargs):
    """An argparse.ArgumentParser whose own complaints (an invalid choice, a missing value, an
    unknown flag) are UserErrors: one line and exit 2 like any other mistake, not a usage block."""
    parser = argparse.ArgumentParser(**kwargs)

    def fail(message):
        raise UserError(message)
    parser.error = fail
    parse = parser.parse_args

    def parse_args(args=None, namespace=None):
        parsed = parse(args, namespace)
        refuse_empty(parser, parsed)
        return parsed
    parser.parse_args = parse_args
    return parser


MAY_BE_EMPTY = {"prompt"}  # Part 3's --prompt "": the empty prompt, on purpose


def refuse_empty(parser, args):
    """An empty value (an unset shell variable: --resume "$RUN") is refused rather than read as
    "not given" or as the current folder."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.option_strings and action.dest not in MAY_BE_EMPTY and \
                isinstance(value, str) and not value.strip():
            raise UserError(f"{action.option_strings[-1]} is empty (an unset shell variable?); "
                            "give it a value, or leave the flag out")


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


MAX_MINUTES = 100_000  # about ten weeks: a budget beyond it is a typo, and would never fire


MAX_SEED = 2 ** 63 - 1  # torch.manual_seed's limit


def seed(text):
    """argparse type for --seed: an integer in 0..2**63 - 1, the range torch accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63 - 1, got {text}")
    return value


def memory_bytes():
    """This machine's memory in bytes (None where it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


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


_ceiling = None  # torch's own thread count when pick_threads last decided (None: it did not)


def pick_threads():
    """Set torch's thread count to the idle cores (at least one, at most torch's own default), and
    return it. Torch's threads wait for each other at every layer, so one thread on a core that
    another job is using holds all of them up: beside one busy core, two threads trained at half
    the speed of one (measured on a 2-core laptop). OMP_NUM_THREADS, if set, decides instead."""
    global _ceiling
    import torch  # here: this file is imported by the grading plugin, which needs no torch
    _ceiling = None
    if "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() == 1:
        return torch.get_num_threads()  # nothing to decide
    _ceiling = torch.get_num_threads()
    torch.set_num_threads(threads_for_idle_cores(_ceiling, _ceiling))
    return torch.get_num_threads()


def threads_for_idle_cores(ceiling, otherwise):
    """One thread per idle core, at least one, at most `ceiling`; `otherwise` where the idle cores
    cannot be read."""
    idle = idle_cores()
    return otherwise if idle is None else max(1, min(ceiling, math.floor(idle + 0.5)))


class ThreadTuner:
    """Torch's thread count, chosen again while a loop runs. pick_threads chooses once, at the
    start, but a laptop's other work starts and stops later, and two threads beside a busy core
    ran 3 to 26 times slower than one (measured on a 2-core laptop). Every WINDOW seconds the tuner
    measures the rate at the count in use; when it falls by a third, or when the other count (1, or
    torch's default) was last tried EXPLORE seconds ago, it tries that one for a window; otherwise
    it keeps the faster. A new loop (sampling after training) starts, as pick_threads does, at one
    thread per idle core: the load the last loop moved away from may have ended. It works only
    where pick_threads chose the count: not where OMP_NUM_THREADS is set, or torch was given a
    single thread."""
    WINDOW, EXPLORE = 2.0, 90.0

    def __init__(self):
        import torch
        self.torch, self.counts = torch, (1, _ceiling or 1)
        self.on = self.counts[1] > 1  # only where pick_threads decided the count
        if self.on:
            torch.set_num_threads(threads_for_idle_cores(self.counts[1], torch.get_num_threads()))
        self.rates, self.ticks, self.since = {}, 0, time.time()
        self.start = self.since

    def tick(self):
        self.ticks += 1
        now = time.time()
        if not self.on or now - self.since < self.WINDOW:
            return
        n = self.torch.get_num_threads()
        rate = self.ticks / (now - self.since)
        fell = n in self.rates and rate < 2 / 3 * self.rates[n][0]
        self.rates[n] = (rate, now)
        other = self.counts[0] if n != self.counts[0] else self.counts[1]
        tried = self.rates.get(other, (0.0, self.start))[1]
        if fell or now - tried > self.EXPLORE:
            choice = other
        else:
            choice = max((n, other), key=lambda c: self.rates.get(c, (0.0,))[0])
        self.torch.set_num_threads(choice)
        self.ticks, self.since = 0, time.time()


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
        self.show, self.threads = show, ThreadTuner() if "torch" in sys.modules else None
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
        if self.threads:
            self.threads.tick()
        now = time.time()
        if self.show and (now - self.last > 1 or self.done == self.total):
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate
            if self.limit is not None:
                left = min(left, self.limit - (now - self.start))
            n = self.threads.torch.get_num_threads() if self.threads else None
            progress(f"{self.what}: step {self.done}/{self.total}  {note + '  ' if note else ''}"
                     f"{rate:.2f} steps/s  ETA {max(left, 0) / 60:.1f} min"
                     + (f"  {n} thread{'s' if n > 1 else ''}" if n else ""))
            self.last = now

    def close(self):
        end_progress()


# Every signal that ends a process asks it to stop: Ctrl-C, kill/docker stop/SLURM, and SIGHUP,
# which a closing terminal or a dropped ssh session sends (Windows has no SIGHUP).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
_stopped_by = []  # the signal that stopped this script's work, once one has


def note_stop(signum):
    """A stop signal ended the work (a training saved its checkpoint and stopped): run_main then
    exits with 128 + its number, so that `python part2_diffusion.py && ...` does not carry on."""
    _stopped_by.append(int(signum))


def _stop(signum, frame):
    note_stop(signum)
    raise KeyboardInterrupt


def run_main(main):
    """Run `main()`; turn a UserError into 'error: ...' on stderr and exit status 2.

    SIGTERM (from `kill`, `docker stop`, SLURM) and SIGHUP (a closing terminal) are treated like
    Ctrl-C: each ends the script with one line and exit status 128 + the signal's number (130
    Ctrl-C, 143 SIGTERM, 129 SIGHUP), not a traceback. atomic_write never leaves half a file
    behind; a script that can save its work first (training) catches them itself, saves, and
    still ends with that status (note_stop). The folders it locked are let go of at the end."""
    del _stopped_by[:]
    old = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        main()
    except UserError as e:
        end_progress()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(128 + _stopped_by[0] if _stopped_by else 2)
    except MemoryError:  # ulimit -v, or a request the checks could not foresee
        end_progress()
        print("error: out of memory; use a smaller --batch-size or --n, or free some memory",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        end_progress()
        print("interrupted", file=sys.stderr)
        sys.exit(128 + (_stopped_by[0] if _stopped_by else signal.SIGINT))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        release_locks()
    if _stopped_by:
        sys.exit(128 + _stopped_by[0])
