"""Writing results safely: atomic files, run folders, and the one-line error for user mistakes.

Every file the lab writes (figures, checkpoints, samples, JSON) goes through `atomic_write`: the data is
written to a temporary file in the same folder and then renamed over the target. A rename within one
folder is atomic, so an interrupted run (Ctrl-C, a crash, a full disk) leaves either the old file or the
new one, never half of one.

Scripts raise `UserError` for mistakes a user can fix (a bad flag, a missing file); `run_main` turns it
into one line on stderr and exit status 2, with no traceback. Bugs still raise normally.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)  # the only way to read the umask is to set it; put it straight back


class UserError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, in one line."""


def atomic_write(path, write):
    """Call `write(tmp_path)` to fill a temporary file, then rename it to `path`.

    `write` receives a str path (so torch.save, np.save, fig.savefig all work) and must create the file.
    The suffix of `path` is kept on the temporary name, because savefig and np.save infer the format
    from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the result the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
        raise UserError(f"cannot write to output folder {folder} ({e.strerror}); choose another with {flag}")
    return folder


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that states each default once: "(default: X)" is added only when the help text does not
    already name the default, and never for flags whose default is None or False (nothing to say)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def run_main(main):
    """Run `main()`; turn a UserError into 'error: ...' on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
