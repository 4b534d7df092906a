"""Grade a class with the instructor's tests, and write the autograder zip for Gradescope.

    python grade_class.py submissions/ --out=grades   # a sub-folder or .zip per student
    python grade_class.py ../alice --out=grades       # one student's folder (or alice.zip)
    python grade_class.py submissions/ --out=grades --exercises 1 2   # only these exercises
    python grade_class.py --gradescope=autograder.zip # Gradescope's autograder, see INSTRUCTORS.md

Each submission is graded in its own temporary copy of the student edition (make_assignment.py's):
the instructor's tests/, pytest.ini and grading plugin, with the student's own modules (the lab's
*.py files, found at the top of the submission or in the one folder it holds) copied over the
edition's. The student's tests/ are never run, and the submission is never modified. Each runs in
its own process under a wall-clock limit (--timeout) and each test phase under --test-timeout; a
submission that is missing files, does not compile, loops, or whose zip is unsafe gets its row
with the reason, and the class goes on.

In the copy, Python's own file and process functions may write only inside the copy and start no
program: a submission that tries to is stopped there (its test fails) and its row says so. This
catches mistakes and casual mischief, not a determined attack: grade untrusted code in a container
or a throwaway machine (Gradescope runs each submission in its own).

Writes, in --out: STUDENT/grades.json (the --grade-json file), STUDENT/results.json (Gradescope's
format), STUDENT/classroom.json (GitHub Classroom's), STUDENT/pytest.txt (what pytest printed), and
class.csv: one row per student, sorted by name, with the points of each exercise, the total and
the notes (why points are missing). Every file is written atomically.
"""
import csv
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from make_assignment import make_edition
from outputs import UserError, arg_parser, atomic_write, check_writable, run_main, save_json

SOURCE = Path(__file__).resolve().parent
sys.path.insert(0, str(SOURCE / "tests"))
from conftest import POINTS  # noqa: E402

TIMEOUT = 600  # seconds per submission: the full grading takes ~10-20 s on a 2-core laptop
TEST_TIMEOUT = 60  # seconds per test phase (the plugin's --grade-timeout)
MAX_UNZIPPED = 500e6  # bytes: a bigger zip is refused
IGNORED = {"__MACOSX", "__pycache__", ".git"}
MARK = re.compile(r"\bmark\.ex(\d+)\b")  # how a test file names the exercises it grades

# Run as the submission's python: the file and process functions may act inside ROOT only.
GUARD = r"""
import os, sys
root, log = os.path.realpath(sys.argv[1]), os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATHS = {"os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 2,
         "os.link": 2, "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.utime": 1,
         "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2}
SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
         "os.forkpty", "pty.spawn")
def outside(path):
    if isinstance(path, int) or path is None:
        return False
    path = os.path.realpath(os.fsdecode(path))
    return not (path == root or path.startswith(root + os.sep) or path == os.devnull)
def refuse(what):
    os.write(log, (" ".join(what.split()) + "\n").encode())
    raise PermissionError(f"the grader allows no {what}")
def guard(event, args):
    if event == "open" and args[2] & WRITE and outside(args[0]):
        refuse(f"write outside the submission's folder: {os.fsdecode(args[0])}")
    elif event == "os.mkdir" and os.path.isdir(args[0]):
        return  # nothing to do: makedirs(..., exist_ok=True) of a folder that is there
    elif event in PATHS and any(outside(a) for a in args[:PATHS[event]]):
        refuse(f"{event} outside the submission's folder: {args[PATHS[event] - 1]}")
    elif event in SPAWN:
        refuse(f"program started ({event})")
sys.addaudithook(guard)
import pytest
sys.exit(pytest.main(sys.argv[3:]))
"""


class Refused(Exception):
    """A submission that cannot be graded at all: its row says why."""


def safe_name(name):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._") or "student"


def unzip(path, dest):
    """Extract the zip `path` into `dest`, refusing a member that would land outside it."""
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            for m in members:
                parts = m.filename.replace("\\", "/").split("/")
                if m.filename.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
                    raise Refused(f"zip member {m.filename!r} would land outside its folder; "
                                  "zip the lab's folder again (paths inside it only)")
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise Refused(f"zip member {m.filename!r} is a symbolic link; "
                                  "zip the files themselves")
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise Refused(f"the zip unpacks to more than {MAX_UNZIPPED / 1e6:.0f} MB; "
                              "leave data and runs out of it")
            z.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise Refused(f"not a readable zip ({e}); ask for the zip again")


def find_root(folder, modules):
    """The folder of the submission that holds the lab's modules: `folder`, or the one folder
    (and so on, a few levels) it holds; with a note when it is not `folder` itself."""
    root, note = folder, None
    for _ in range(3):
        if any((root / m).is_file() for m in modules):
            break
        inner = [p for p in root.iterdir() if p.is_dir() and p.name not in IGNORED]
        if len(inner) != 1:
            break
        root = inner[0]
    if root != folder:
        note = f"modules found in its folder {root.relative_to(folder).as_posix()}/"
    return root, note


def differing_tests(root, edition):
    """The files of the submission's tests/ that differ from the instructor's (or are extra)."""
    if not (root / "tests").is_dir():
        return []
    return sorted(p.name for p in (root / "tests").glob("*.py")
                  if not (edition / "tests" / p.name).is_file()
                  or p.read_bytes() != (edition / "tests" / p.name).read_bytes())


def submissions(path):
    """[(student, folder or zip)] of `path`: one student's folder or zip, or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a student's folder or zip, "
                        "or a folder of submissions")
    if path.is_file() or any(path.glob("*.py")) or (path / "tests").is_dir():
        found = [path]
    else:
        found = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                       and p.name not in IGNORED and (p.is_dir() or p.suffix.lower() == ".zip"))
    if not found:
        raise UserError(f"{path} holds no submission (a sub-folder or .zip per student); "
                        "check the path")
    named, out = {}, []
    for p in found:
        name = safe_name(p.stem if p.is_file() else p.name)
        named[name] = named.get(name, 0) + 1
        out.append((name if named[name] == 1 else f"{name}-{named[name]}", p))
    return out


def pytest_args(exercises, test_timeout, edition, out):
    """The grading run's options: every format written into the folder `out`; with `exercises`,
    only the test files that grade them."""
    args = ["-p", "no:cacheprovider", f"--grade-timeout={test_timeout}",
            f"--grade-json={out / 'grades.json'}", f"--grade-gradescope={out / 'results.json'}",
            "--grade-classroom"]
    if exercises:
        args += ["-m", " or ".join(f"ex{n}" for n in exercises)]
        args += [f"tests/{p.name}" for p in sorted((edition / "tests").glob("test_*.py"))
                 if {int(n) for n in MARK.findall(p.read_text())} & set(exercises)]
    return args


def listed(names, most=3):
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def grade_one(name, path, edition, modules, out, exercises, timeout, test_timeout):
    """Grade one submission into the folder `out`; return its row: {exercise: points}, notes."""
    notes, start = [], time.time()
    with tempfile.TemporaryDirectory(prefix=f"grade-{name}-") as tmp:
        tmp = Path(tmp)
        if path.is_file():
            unzip(path, tmp / "unzipped")
            path = tmp / "unzipped"
        root, note = find_root(path, modules)
        notes += [note] if note else []
        work = tmp / "work"
        shutil.copytree(edition, work)
        missing = [m for m in modules if not (root / m).is_file() or (root / m).is_symlink()]
        for m in modules:
            if m not in missing:
                shutil.copyfile(root / m, work / m)
        if len(missing) == len(modules):
            notes.append("none of the lab's modules found: graded as the untouched edition")
        elif missing:
            notes.append(f"missing {listed(missing)}: graded as the untouched edition's")
        if edited := differing_tests(root, edition):
            notes.append(f"its own tests/ ignored (differ from the instructor's: {listed(edited)})")
        (work / ".tmp").mkdir()
        log = work / ".tmp" / "refused.txt"
        log.touch()
        env = dict(os.environ, TMPDIR=str(work / ".tmp"), HOME=str(work / ".tmp"),
                   MPLCONFIGDIR=str(edition.parent / "matplotlib"), MPLBACKEND="Agg",
                   PYTHONDONTWRITEBYTECODE="1")
        results = work / ".tmp" / "results"
        results.mkdir()
        command = [sys.executable, "-c", GUARD, str(work), str(log),
                   *pytest_args(exercises, test_timeout, edition, results)]
        with open(tmp / "stdout", "w+b") as stdout, open(tmp / "stderr", "w+b") as stderr:
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                notes.append(f"stopped after {timeout:g} s (the wall-clock limit, --timeout)")
                stop(proc)
            stdout.seek(0), stderr.seek(0)
            classroom, printed = stdout.read(), stderr.read()
        refused = sorted(set(log.read_text().splitlines()))
        notes += [f"refused: {r}" for r in refused[:3]]
        for file, data in [("pytest.txt", printed), ("classroom.json", classroom)]:
            if data.strip():
                atomic_write(out / file, lambda t, data=data: Path(t).write_bytes(data))
        for file in ("grades.json", "results.json"):
            if (results / file).is_file():
                atomic_write(out / file, lambda t, f=results / file: shutil.copyfile(f, t))
    return summary(out / "grades.json", notes, time.time() - start, exercises)


def stop(proc):
    """SIGTERM the submission's process group (the plugin then writes its grades), then kill."""
    for sig, wait in [(signal.SIGTERM, 10), (signal.SIGKILL, None)]:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def summary(grades_path, notes, seconds, exercises=None):
    """The class row of one graded submission: its points per exercise and the notes."""
    try:
        grades = json.loads(grades_path.read_text())
    except (OSError, ValueError):
        return dict(points={}, notes=notes + ["the tests did not start: see pytest.txt"],
                    seconds=seconds)
    by_status = {}
    for r in grades["exercises"]:
        if r["points"] < r["possible"] and r["exercise"] in (exercises or POINTS):
            by_status.setdefault(r["status"], []).append(str(r["exercise"]))
    notes += [f"ex{', '.join(ns)}: {status}" for status, ns in by_status.items()]
    timed_out = {f["exercise"]: f["message"] for f in grades["failures"]
                 if f["message"].startswith("timed out")}
    notes += [f"ex{n}: {message}" for n, message in sorted(timed_out.items())]
    if not grades.get("finished"):
        notes.append("the run did not finish: the tests not run count as failed")
    return dict(points={r["exercise"]: r["points"] for r in grades["exercises"]},
                notes=notes, seconds=seconds)


def grade_class(path, out, exercises=None, timeout=TIMEOUT, test_timeout=TEST_TIMEOUT, jobs=1):
    """Grade every submission of `path` into the folder `out`, `jobs` at a time; return the
    class's rows."""
    out = Path(out).resolve()
    subs = submissions(path)
    if any(out == p.resolve() or p.resolve() in out.parents for _, p in subs if p.is_dir()):
        raise UserError(f"--out {out} lies inside a submission; choose a folder outside them")
    check_writable(out)
    numbers = sorted(exercises or POINTS)
    if set(numbers) - set(POINTS):
        raise UserError(f"there is no exercise {min(set(numbers) - set(POINTS))}; "
                        f"the exercises are {', '.join(map(str, POINTS))}")
    if jobs < 1:
        raise UserError(f"--jobs must be 1 or more (got {jobs})")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="grade-edition-") as tmp:
        edition = Path(tmp) / "edition"
        make_edition(SOURCE, edition)
        modules = sorted(p.name for p in edition.glob("*.py"))
        # matplotlib's font cache, built here once: in the copies it may not be written
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True,
                       env=dict(os.environ, MPLCONFIGDIR=str(Path(tmp) / "matplotlib")))

        def one(name, sub):
            try:
                row = grade_one(name, sub, edition, modules, out / name, exercises, timeout,
                                test_timeout)
            except Refused as e:
                row = dict(points={}, notes=[str(e)], seconds=0.0)
            except Exception as e:  # the grader's own trouble with this one: the class goes on
                row = dict(points={}, notes=[f"not graded: {type(e).__name__}: {e}"], seconds=0.0)
            total = sum(row["points"].get(n, 0) for n in numbers)
            print(f"{name}: {total}/{sum(POINTS[n] for n in numbers)} ({row['seconds']:.1f} s) "
                  f"{'; '.join(row['notes']) or 'done'}", flush=True)
            return name, row
        with ThreadPoolExecutor(jobs) as pool:
            rows = dict(pool.map(lambda s: one(*s), subs))
    write_csv(out / "class.csv", rows, numbers)
    return rows


def write_csv(path, rows, numbers):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["student", *(f"ex{n}/{POINTS[n]}" for n in numbers),
                     f"total/{sum(POINTS[n] for n in numbers)}", "notes"])
    for name in sorted(rows):
        points = [rows[name]["points"].get(n, 0) for n in numbers]
        writer.writerow([name, *points, sum(points), "; ".join(rows[name]["notes"]) or "done"])
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


# --- Gradescope's autograder ------------------------------------------------------------------

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder's image (choose a base image with
# Python 3.11 or later, e.g. Ubuntu 24.04). The CPU build of the pinned torch: no GPU there.
set -eu
apt-get update && apt-get install -y python3 python3-venv python3-pip
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \\
    -r /autograder/source/lab/requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: the student's modules over the reference edition
# (lab/), then the reference tests; the grades go to results/results.json. Arguments, if any,
# go to pytest (Gradescope gives none).
set -u
AG=${AUTOGRADER:-/autograder}
PYTHON=${PYTHON:-$AG/venv/bin/python}
work=$(mktemp -d)
cp -r "$AG/source/lab/." "$work"
for module in MODULES; do  # the shallowest copy of each module in the submission
  found=$(find "$AG/submission" -name "$module" -type f -not -path "*/tests/*" -printf '%d %p\\n' \\
          | sort -n | head -n 1 | cut -d' ' -f2-)
  if [ -n "$found" ]; then cp "$found" "$work/$module"; fi
done
mkdir -p "$AG/results"
rm -f "$AG/results/results.json"
cd "$work"
timeout TIMEOUT "$PYTHON" -m pytest -p no:cacheprovider --grade-timeout=TEST_TIMEOUT \\
    --grade-gradescope="$AG/results/results.json" "$@"
if [ ! -s "$AG/results/results.json" ]; then
  echo '{"score": 0, "output": "the tests did not finish (time limit or crash): see the log"}' \\
    > "$AG/results/results.json"
fi
"""


def write_autograder(path, timeout=TIMEOUT, test_timeout=TEST_TIMEOUT):
    """Gradescope's autograder zip: setup.sh, run_autograder and the student edition in lab/."""
    path = Path(path)
    if path.suffix != ".zip":
        raise UserError(f"--gradescope={path}: name a .zip file, e.g. autograder.zip")
    check_writable(path.resolve().parent, "--gradescope")
    with tempfile.TemporaryDirectory(prefix="autograder-") as tmp:
        edition = Path(tmp) / "lab"
        make_edition(SOURCE, edition)
        modules = " ".join(sorted(p.name for p in edition.glob("*.py")))
        run = RUN_AUTOGRADER.replace("MODULES", modules)
        run = run.replace("TEST_TIMEOUT", f"{test_timeout:g}").replace("TIMEOUT", f"{timeout:g}")

        def write(tmp_zip):
            with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
                for name, text in [("setup.sh", SETUP_SH), ("run_autograder", run)]:
                    info = zipfile.ZipInfo(name)
                    info.external_attr = (stat.S_IFREG | 0o755) << 16
                    z.writestr(info, text)
                for f in sorted(edition.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(edition.parent).as_posix())
        atomic_write(path, write)


def main(argv=None):
    parser = arg_parser(description="Grade submissions with the instructor's tests (a class CSV "
                                    "and each student's grades), or write Gradescope's autograder.")
    parser.add_argument("submissions", nargs="?", metavar="PATH",
                        help="a student's folder or zip, or a folder of them (one each)")
    parser.add_argument("--out", default="grades", metavar="DIR",
                        help="where the grades go (default: grades): class.csv, STUDENT/...")
    parser.add_argument("--exercises", type=int, nargs="+", metavar="N",
                        help="grade only these exercises (default: all)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, metavar="SECONDS",
                        help=f"wall-clock limit per submission (default {TIMEOUT})")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT, metavar="SECONDS",
                        help=f"limit per test phase (default {TEST_TIMEOUT})")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="grade N submissions at a time (default 1; at most half the cores, "
                             "or the per-test limit may trip)")
    parser.add_argument("--gradescope", metavar="ZIP",
                        help="write Gradescope's autograder zip there instead of grading")
    args = parser.parse_args(argv)
    if args.gradescope:
        write_autograder(args.gradescope, args.timeout, args.test_timeout)
        print(f"wrote {args.gradescope}: upload it as the assignment's autograder (see "
              "INSTRUCTORS.md, 'Grade a class')")
        return
    if not args.submissions:
        parser.error("give the submissions to grade (a folder or zip), or --gradescope=ZIP")
    start = time.time()
    rows = grade_class(args.submissions, args.out, args.exercises, args.timeout,
                       args.test_timeout, args.jobs)
    print(f"graded {len(rows)} submission{'s' * (len(rows) != 1)} in {time.time() - start:.1f} s;"
          f" the class table: {Path(args.out) / 'class.csv'}")


if __name__ == "__main__":
    run_main(main)
