"""The grading plugin: each exercise's score, for the student edition of the lab.

A test grades exercise N when it carries @pytest.mark.exN. A test that also runs the code of another
exercise names it: @pytest.mark.ex6(depends=[5]). Then

    python -m pytest -m ex6                    # exercise 6's tests alone, with pytest's full report
    python -m pytest --grade                   # the graded tests only, then points per exercise
    python -m pytest --grade-json=grades.json  # the same, also written as JSON for a gradebook
    python -m pytest                           # every test, the scripts' end-to-end ones (e2e) too

The options are declared in the top folder's conftest.py (pytest reads it whatever it runs), which
refuses the spaced `--grade-json FILE`: once FILE exists pytest would take it for a test path.

Points: one per test function, earned when every case of it that ran passed (parametrized cases and
hypothesis examples test one property; they do not multiply its weight). POINTS below says how many
each exercise is out of, so that an exercise whose tests could not run still gets its row: 0/N, and
why. A function all of whose cases were skipped is left out of its exercise's N.

What grading does beyond pytest's usual run:
  - it runs only the graded tests, and prints one line per failure instead of pytest's tracebacks
    (--tb=short brings them back; so does `python -m pytest -m exN`);
  - a test file that cannot be imported (a syntax error in schedule.py, say) gives its exercises
    "not collected: SyntaxError at schedule.py:138: ...", and every other exercise is graded;
  - each phase of a test (setup, call, teardown) may run for --grade-timeout seconds (default
    60); one that runs over fails with "timed out after N s", and the later tests of the same
    exercise then fail at once instead of waiting as long again;
  - the table and grades.json are written however the run ends: normally, on Ctrl-C, or on
    SIGTERM (a test cut short counts as failed); grades.json is also written when collection is
    done, so that even a run killed outright leaves one (with "finished": false);
  - hypothesis reports one minimal failing example, and draws the same examples on every run.
A failing test that also runs another exercise's code blames it only if it fails its own tests.

Without --grade or --grade-json the plugin prints one line first, naming --grade, and keeps the
run short where exercises are not done yet: a test that fails in an exercise's NotImplementedError
(its own, or one a script it runs printed) is reported as "unfinished" (u), without its traceback,
and closing lines count them per exercise, with the exercise's message. Only exercises whose code
is still the edition's `raise NotImplementedError(...)` count: in the reference, every failure is
reported as pytest does. The plugin also checks the markers: a test that grades two exercises,
a malformed `depends`, or an exercise of pytest.ini without its POINTS stops the run.

At the end: `mnist_dir`, the tiny fake MNIST that the scripts' end-to-end tests share, and a check
that no test writes into the checkout.
"""
import gzip
import re
import signal
import threading
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import grading_formats
from outputs import UserError, check_writable, save_json

# How many points (graded test functions) each exercise is out of; the instructors' own tests check
# them against the tests: change them when you add or remove a graded test.
POINTS = {1: 2, 2: 3, 3: 4, 4: 3, 5: 2, 6: 8, 7: 6, 8: 4, 9: 6, 10: 2, 11: 5, 12: 4}

ROOT = Path(__file__).resolve().parents[1]
EXERCISE_MARK = re.compile(r"ex(\d+)")
MARK_IN_SOURCE = re.compile(r"\bmark\.ex(\d+)\b")  # how a test file names the exercises it grades
UNFINISHED = re.compile(r"Exercise (\d+): ")  # the message of an exercise taken out of the edition
# the edition's stand-in for an exercise's code; and its message as it reads in a report (a
# traceback, or a script's output that a test quotes)
TAKEN_OUT = re.compile(r'^\s*raise NotImplementedError\("Exercise (\d+): ', re.MULTILINE)
UNFINISHED_IN_REPORT = re.compile(r"NotImplementedError: (Exercise (\d+): [^\n\\]*)")
GRADE_FIRST = ("your points: python -m pytest --grade (the graded tests only, in seconds); this "
               "plain run runs every test, the scripts end to end too (minutes)")


def exercises_in_ini(config):
    """The exercise numbers registered as markers in pytest.ini (`exN: ...`)."""
    lines = config.getini("markers")
    return sorted(int(m[1]) for line in lines if (m := re.match(r"ex(\d+):", line)))


def pytest_configure(config):
    if exercises_in_ini(config) != sorted(POINTS):
        raise pytest.UsageError(f"pytest.ini registers exercises {exercises_in_ini(config)} but "
                                f"tests/conftest.py's POINTS has {sorted(POINTS)}; make them agree")
    path = config.getoption("grade_json")
    if path:
        path = Path(config.invocation_params.dir, path)
        try:
            check_writable(path.parent)  # now, not after the whole run
        except UserError:
            raise pytest.UsageError(f"--grade-json={path}: cannot write in {path.parent}; "
                                    "choose another place")
    grading = config.getoption("grade") or bool(path) or grading_formats.wanted(config)
    if grading:
        grading_profile()
        config.option.continue_on_collection_errors = True  # a file that fails stops no other
    grader = Grader(config, grading, path)
    config.pluginmanager.register(grader, "grader")
    if grading_formats.wanted(config):
        config.pluginmanager.register(grading_formats.Formats(config, grader), "grading-formats")


def grading_profile():
    """Hypothesis while grading: one minimal failing example, the same examples on every run (a
    grade must not depend on luck), and no example database in the student's folder. Loaded before
    the test modules are imported, so that their @settings(...) build on it."""
    from hypothesis import settings
    settings.register_profile("grading", parent=settings.default, report_multiple_bugs=False,
                              derandomize=True, database=None, print_blob=False)
    settings.load_profile("grading")


def exercise_of(item):
    """(number, depends) of the exercise the test `item` grades, or None if it grades none."""
    marks = [(int(m[1]), mark) for mark in item.iter_markers()
             if (m := EXERCISE_MARK.fullmatch(mark.name))]
    if not marks:
        return None
    if len({n for n, _ in marks}) > 1:
        numbers = sorted({n for n, _ in marks})
        raise pytest.UsageError(f"{item.nodeid} is marked for exercises {numbers}; a test grades "
                                "one exercise (list the others in depends=[...])")
    n, mark = marks[0]
    depends = mark.kwargs.get("depends", [])
    if mark.args or set(mark.kwargs) - {"depends"} or \
            not all(isinstance(d, int) and d != n for d in depends):
        raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.ex{n} or @pytest.mark.ex{n}("
                                f"depends=[numbers of the other exercises it runs]); got {mark}")
    return n, sorted(depends)


def unfinished_exercise(exc):
    """The number of the exercise whose NotImplementedError `exc` is (or holds, in an
    ExceptionGroup), or None."""
    if isinstance(exc, NotImplementedError) and (m := UNFINISHED.match(str(exc))):
        return int(m[1])
    for inner in getattr(exc, "exceptions", ()):
        if (n := unfinished_exercise(inner)) is not None:
            return n
    return None


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(exc):
    """A failure in one line: the exception's first line, and hypothesis's minimal example."""
    if isinstance(exc, (TimedOut, FixtureTimedOut)):
        return str(exc)
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    # "Falsifying example: test(...)" in older versions of hypothesis, "Failing test case: ..." now
    notes = [note.partition(":")[2] for note in getattr(exc, "__notes__", [])
             if note.startswith(("Falsifying example:", "Failing test case:"))]
    if notes:
        example = " ".join(re.sub(r"#.*", "", notes[0]).split())  # without hypothesis's comments
        example = re.sub(r",? ?\)", ")", example.replace("( ", "("))
        text = f"{one_line(text, 300)} [minimal example: {example}]"
    return one_line(text, 450)


def import_failure(exc, root):
    """Why a test file could not be imported, in one line naming the lab's file and line:
    "SyntaxError at schedule.py:138: unmatched ')'"."""
    while exc.__cause__ is not None:  # pytest wraps the import's own error in a CollectError
        exc = exc.__cause__
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{relative(exc.filename, root)}:{exc.lineno}"
    else:  # the last line of the lab's own code in the traceback
        ours = [f for f in traceback.extract_tb(exc.__traceback__)
                if relative(f.filename, root) != f.filename]
        where = f"{relative(ours[-1].filename, root)}:{ours[-1].lineno}" if ours else "?"
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return one_line(f"{type(exc).__name__} at {where}: {message}", 200)


def relative(filename, root):
    try:
        return Path(filename).resolve().relative_to(root).as_posix()
    except ValueError:
        return filename


# --- the time limit -------------------------------------------------------------------------------

class TimedOut(BaseException):
    """A test ran past the time limit. A BaseException, so that neither a student's
    `except Exception` nor hypothesis (which would replay the example, endlessly) catches it;
    pytest records it as the test's failure."""


class FixtureTimedOut(Exception):
    """A fixture ran past the time limit: an Exception, which pytest's fixtures record like any of
    their errors (they are not built for a BaseException)."""


class TimeLimit:
    """Raise `error` in the main thread after `seconds`: by SIGALRM where there is one (POSIX), else
    from a timer thread that interrupts the main thread (its KeyboardInterrupt becomes `error`)."""

    def __init__(self, seconds, error=TimedOut):
        self.seconds, self.error, self.fired = seconds, error, False
        main = threading.current_thread() is threading.main_thread()
        self.alarm = main and hasattr(signal, "setitimer")

    def message(self):
        return f"timed out after {self.seconds:g} s (an endless loop?)"

    def expire(self, *_):
        self.fired = True
        if self.alarm:
            raise self.error(self.message())
        import _thread
        _thread.interrupt_main()

    def __enter__(self):
        if self.alarm:
            self.previous = signal.signal(signal.SIGALRM, self.expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self.timer = threading.Timer(self.seconds, self.expire)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, kind, value, tb):
        if self.alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        else:
            self.timer.cancel()
        if self.fired and kind is KeyboardInterrupt:
            raise self.error(self.message()) from None
        return False


class Interrupted(KeyboardInterrupt):
    """SIGTERM while grading: ends the run as Ctrl-C does, so that the grades are still written."""


# --- the grader -----------------------------------------------------------------------------------

class Grader:
    """Collects every test's outcome; prints and writes the scores at the end."""

    def __init__(self, config, grading, json_path):
        self.config, self.grading, self.json_path = config, grading, json_path
        self.limit = config.getoption("grade_timeout")
        self.tests = {}  # nodeid -> exercise, depends, outcome, message, unfinished
        self.uncollected = {}  # exercise -> why its test file could not be imported
        self.collection_errors = []
        self.timed_out = {}  # exercise -> the first of its tests that timed out
        self.not_run = 0  # tests that grade nothing, which --grade leaves out
        self.finished, self.interrupted = False, None  # interrupted: "Ctrl-C" or "SIGTERM"
        self.old_sigterm = None
        self.plain_unfinished = Counter()  # exercise -> its unfinished tests, in a plain run
        self.plain_hints = {}  # exercise -> its NotImplementedError's message
        self.taken_out = set()  # the exercises whose code is the edition's `raise`, in a plain run

    # --- what runs -----------------------------------------------------------------------------

    def pytest_sessionstart(self, session):
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if not self.grading:
            if reporter:
                reporter.write_line(GRADE_FIRST)
            self.taken_out = {int(n) for path in ROOT.glob("*.py")
                              for n in TAKEN_OUT.findall(path.read_text(errors="replace"))}
            return
        if threading.current_thread() is threading.main_thread():
            self.old_sigterm = signal.signal(signal.SIGTERM, self.terminate)
        if reporter and self.config.option.tbstyle == "auto":
            # The table and one line per failure say it all; --tb=short brings pytest's report back.
            self.config.option.tbstyle = "no"
            reporter.reportchars = ""

    def terminate(self, signum, frame):
        raise Interrupted("SIGTERM")

    def pytest_unconfigure(self):
        if self.old_sigterm is not None:
            signal.signal(signal.SIGTERM, self.old_sigterm)

    def pytest_collection_modifyitems(self, config, items):
        graded = [item for item in items if exercise_of(item)]  # refuses bad markers before any run
        if self.grading and len(graded) < len(items):
            self.not_run = len(items) - len(graded)
            config.hook.pytest_deselected(items=[item for item in items if not exercise_of(item)])
            items[:] = graded

    def pytest_collection_finish(self, session):
        self.write_json()  # a first grades.json, "finished": false, in case the run is killed

    def pytest_exception_interact(self, node, call, report):
        """A test file that could not be imported: its exercises get 'not collected' and why."""
        if not isinstance(node, pytest.File) or call.excinfo is None:
            return
        reason = import_failure(call.excinfo.value, ROOT)
        self.collection_errors.append(f"{node.nodeid}: {reason}")
        try:
            numbers = {int(n) for n in MARK_IN_SOURCE.findall(Path(node.path).read_text())}
        except OSError:
            numbers = set()
        for n in numbers:
            self.uncollected.setdefault(n, reason)

    def pytest_collectreport(self, report):
        known = any(e.startswith(f"{report.nodeid}: ") for e in self.collection_errors)
        if report.failed and not known:
            last_line = str(report.longrepr).strip().splitlines()[-1].removeprefix("E").strip()
            self.collection_errors.append(f"{report.nodeid or '.'}: {one_line(last_line, 200)}")

    # --- the time limit ------------------------------------------------------------------------

    def limited(self, item, phase):
        """The time limit for one phase of `item` (graded tests, while grading). A test whose
        exercise timed out already fails at once: in its call, after a setup pytest must see
        through."""
        exercise = exercise_of(item)
        if not (self.grading and exercise and self.limit > 0):
            return None
        n = exercise[0]
        if phase == "call" and n in self.timed_out:
            raise TimedOut(f"not run: {self.timed_out[n]} of exercise {n} timed out already "
                           f"(after {self.limit:g} s)")
        return TimeLimit(self.limit, TimedOut if phase == "call" else FixtureTimedOut)

    def phase(self, item, name):
        limit = self.limited(item, name)
        if limit is None:
            return (yield)
        with limit:
            return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        return (yield from self.phase(item, "setup"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item):
        return (yield from self.phase(item, "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item):
        return (yield from self.phase(item, "teardown"))

    # --- outcomes ------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        exercise, depends = exercise_of(item) or (None, [])
        test = self.tests.setdefault(item.nodeid, dict(
            exercise=exercise, depends=depends, outcome="running", unfinished=None, message=""))
        if report.failed and test["outcome"] != "failed":
            exc = call.excinfo.value if call.excinfo else None
            test.update(outcome="failed", unfinished=unfinished_exercise(exc),
                        message=describe(exc) if exc else one_line(report.longreprtext))
            if isinstance(exc, (TimedOut, FixtureTimedOut)) and exercise is not None \
                    and not str(exc).startswith("not run"):
                self.timed_out.setdefault(exercise, item.nodeid.rpartition("::")[2])
        elif report.skipped and test["outcome"] == "running":
            test["outcome"] = "skipped"
        elif report.when == "call" and report.passed and test["outcome"] == "running":
            test["outcome"] = "passed"  # only now: a test cut short never counts as passed
        if report.failed and not self.grading:
            found = {int(n): message for message, n in
                     UNFINISHED_IN_REPORT.findall(report.longreprtext) if int(n) in self.taken_out}
            if found:
                report.unfinished_exercises = sorted(found)
                self.plain_unfinished.update(list(found))
                for n, message in found.items():
                    self.plain_hints.setdefault(n, one_line(message.rstrip("'\" "), 160))
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report):
        """A plain run's test that stopped at an unfinished exercise: "unfinished", no traceback."""
        if getattr(report, "unfinished_exercises", None):
            return "unfinished", "u", "UNFINISHED"
        return None

    def pytest_keyboard_interrupt(self, excinfo):
        if isinstance(excinfo.value, pytest.Session.Interrupted):
            return  # pytest stopping for its own reasons (-x, errors during collection)
        self.interrupted = "SIGTERM" if isinstance(excinfo.value, Interrupted) else "Ctrl-C"

    def close_running(self):
        """Tests that started but never reported their end were cut short: they failed."""
        for test in self.tests.values():
            if test["outcome"] == "running":
                test.update(outcome="failed", interrupted=True, message=f"interrupted "
                            f"({self.interrupted or 'the run ended'}) before this test finished")

    def scores(self):
        """One row per exercise of pytest.ini: its points, the points possible, what stands in the
        way."""
        functions = {}  # (exercise, test function) -> its cases that ran
        for nodeid, test in self.tests.items():
            if test["exercise"] is not None and test["outcome"] != "skipped":
                functions.setdefault((test["exercise"], nodeid.partition("[")[0]), []).append(test)
        failed = {key: [c for c in cases if c["outcome"] == "failed"]
                  for key, cases in functions.items()}
        # An exercise fails its own tests when a test of it fails although every exercise that test
        # also runs passes all of its tests: only such an exercise is blamed for another's failure.
        clean = {n for n in POINTS if n not in self.uncollected
                 and not any(cases for (e, _), cases in failed.items() if e == n)}
        broken = {e for (e, _), cases in failed.items() for c in cases
                  if c["unfinished"] is None and set(c["depends"]) <= clean}
        return [self.row(n, {f: cases for (e, f), cases in functions.items() if e == n}, broken)
                for n in sorted(POINTS)]

    def row(self, n, mine, broken):
        """Exercise n's row of the table; `mine`: {test function: its cases that ran}."""
        seen = {k.partition("[")[0] for k, t in self.tests.items() if t["exercise"] == n}
        skipped = seen - set(mine)
        possible = max(POINTS[n] - len(skipped), len(mine))
        cases = [c for f, cs in mine.items() for c in cs]
        unfinished = {c["unfinished"] for c in cases if c["outcome"] == "failed"}
        wrong = [(f, c) for f, cs in mine.items() for c in cs if c["outcome"] == "failed"
                 and c["unfinished"] is None and not c.get("interrupted")]
        cut = sorted({f.rpartition("::")[2] for f, cs in mine.items() for c in cs
                      if c.get("interrupted")})
        status = []
        if n in self.uncollected:
            status.append(f"not collected: {self.uncollected[n]}")
        if n in unfinished:
            status.append("not done yet (NotImplementedError)")
        if waits := sorted(unfinished - {n, None}):
            status.append(f"waits for exercise {', '.join(map(str, waits))}")
        if wrong:
            names = sorted({f.rpartition("::")[2] for f, _ in wrong})
            status.append(f"fails {', '.join(names)}")
            suspects = sorted({d for _, c in wrong for d in c["depends"]} & broken - {n})
            if suspects:  # a wrong result upstream can be the real cause
                which = " and ".join(f"exercise {d}" for d in suspects)
                runs = "they also run" if len(names) > 1 else "it also runs"
                fail = "fails" if len(suspects) == 1 else "fail"
                status[-1] += f" ({runs} {which}, which {fail} its own tests: fix that first)"
        if cut:
            status.append(f"interrupted during {', '.join(cut)}")
        missing = possible - len(mine)
        if missing > 0 and n not in self.uncollected:
            status.append(f"{missing} test{'s' if missing > 1 else ''} not run")
        points = sum(all(c["outcome"] == "passed" for c in cs) for cs in mine.values())
        status = "; ".join(status) or "done"
        return dict(exercise=n, points=points, possible=possible, status=status)

    def ungraded(self):
        """How many tests that grade no exercise passed, failed, were skipped, or were not run."""
        counts = Counter(t["outcome"] for t in self.tests.values() if t["exercise"] is None)
        if self.not_run:
            counts["not run (--grade runs the graded tests only)"] = self.not_run
        return dict(counts)

    def failures(self):
        """(exercise, test case, message) of the first failing case of each graded function that
        failed for another reason than an unfinished exercise: the mistakes to look at."""
        seen = {}
        for nodeid, test in self.tests.items():
            if test["exercise"] is not None and test["outcome"] == "failed" and \
                    test["unfinished"] is None:
                key = (test["exercise"], nodeid.partition("[")[0])
                seen.setdefault(key, (nodeid.rpartition("::")[2], test["message"]))
        return [(n, name, message) for (n, _), (name, message) in sorted(seen.items())]

    # --- the report ----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        result = yield  # after pytest's own summary: the scores are the last thing a student reads
        if not self.grading:
            if self.plain_unfinished:
                write = terminalreporter.write_line
                write("unfinished (u): tests that stop at an exercise not done yet")
                for n, count in sorted(self.plain_unfinished.items()):
                    write(f"  {count:>3} test{'s' if count > 1 else ' '} at NotImplementedError: "
                          f"{self.plain_hints[n]}")
                write(GRADE_FIRST.partition(";")[0])
            return result
        self.close_running()
        write, rows = terminalreporter.write_line, self.scores()
        if failures := self.failures():
            terminalreporter.section("what failed")
            for n, name, message in failures:
                write(f"ex{n:<3} {name}: {message}")
            write("(python -m pytest -m exN shows exercise N's full report)")
        terminalreporter.section("scores")
        write(f"{'exercise':>8}   {'points':^7}   status")
        for r in rows:
            write(f"{r['exercise']:>8}   {r['points']:>3}/{r['possible']:<3}   {r['status']}")
        points, possible = sum(r["points"] for r in rows), sum(r["possible"] for r in rows)
        write(f"{'total':>8}   {points:>3}/{possible}")
        if self.interrupted:
            write(f"INTERRUPTED ({self.interrupted}): the tests that did not finish count as "
                  "failed", red=True)
        for error in self.collection_errors:
            write(f"NOT COLLECTED: {error}", red=True)
        return result

    def pytest_sessionfinish(self, exitstatus):
        self.close_running()
        self.finished = True
        self.write_json(int(exitstatus))

    def write_json(self, exit_status=None):
        if not self.json_path:
            return
        rows = self.scores()
        save_json(self.json_path, dict(
            exercises=rows, points=sum(r["points"] for r in rows),
            possible=sum(r["possible"] for r in rows),
            tests={k: t for k, t in self.tests.items() if t["exercise"] is not None},
            failures=[dict(exercise=n, test=name, message=m) for n, name, m in self.failures()],
            ungraded=self.ungraded(), collection_errors=self.collection_errors,
            interrupted=self.interrupted, finished=self.finished, exit_status=exit_status,
            time_limit_s=self.limit))


# --- shared test data and safeguards --------------------------------------------------------------

def write_idx(path, array, magic):
    """`array` as a gzipped IDX file, MNIST's format: magic number, sizes, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """48 training and 16 test 'digits' in the real IDX format: random strokes are enough for the scripts'
    end-to-end tests (a classifier trained on them scores every figure, if meaninglessly)."""
    d = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in [("train", 48), ("t10k", 16)]:
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 2049)
    return d


CHECKOUT_OUTPUTS = ("runs", "data", "reference/samples")  # where the scripts write by default


def entries(folder):
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture(autouse=True, scope="session")
def nothing_written_into_the_checkout():
    """Tests write under tmp_path only: fail the run if one left something in runs/, data/ or
    reference/samples/ of the checkout (the scripts' default output folders)."""
    before = {name: entries(ROOT / name) for name in CHECKOUT_OUTPUTS}
    yield
    new = [f"{name}/{entry}" for name in CHECKOUT_OUTPUTS
           for entry in sorted(entries(ROOT / name) - before[name])]
    if new:
        pytest.fail(f"tests wrote into the checkout: {', '.join(new)}; "
                    "give them paths under tmp_path")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread for the whole suite: the models here are tiny, so a second thread only adds
    waiting, and on a 2-core machine shared with other jobs two threads made a training step up to
    40 times slower. The count is restored afterwards."""
    import torch  # here: the grading plugin above needs no torch of its own
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
