"""The grading plugin: each exercise's score, for the student edition that make_assignment.py writes.

A test grades exercise N when it carries @pytest.mark.exN. A test that also runs the code of other exercises
names them: @pytest.mark.ex6(depends=[3, 5]). Then

    python -m pytest -m ex6                      # exercise 6's tests alone
    python -m pytest --grade                     # and, at the end, a table of points per exercise
    python -m pytest --grade-json grades.json    # the same, also written as JSON for a gradebook

Points: one per test function, earned when every case of it that ran passed (parametrized cases and
hypothesis examples test one property; they do not multiply its weight). Skipped cases do not count; a
function all of whose cases were skipped is left out. A test that fails because another exercise still
raises its NotImplementedError earns nothing either, but the table puts the blame on that exercise.

Without --grade or --grade-json the plugin prints nothing: the reference suite's output stays as it was,
a page of full marks on every run would hide what matters there. It still checks the markers: a test that
grades two exercises, or a malformed `depends`, stops the run.

At the end: `mnist_dir`, the tiny fake MNIST that the scripts' end-to-end tests share.
"""
import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from outputs import UserError, check_writable, save_json

EXERCISE_MARK = re.compile(r"ex(\d+)")
UNFINISHED = re.compile(r"Exercise (\d+): ")  # the message of an exercise make_assignment.py took out


def pytest_addoption(parser):
    group = parser.getgroup("grading")
    group.addoption("--grade", action="store_true", help="print each exercise's points at the end of the run")
    group.addoption("--grade-json", metavar="FILE", help="write each exercise's points to FILE as JSON, and print them")


def pytest_configure(config):
    path = config.getoption("grade_json")
    if path:
        path = Path(config.invocation_params.dir, path)
        try:
            check_writable(path.parent)  # now, not after the whole run
        except UserError:
            raise pytest.UsageError(f"--grade-json {path}: cannot write in {path.parent}; choose another place")
    config.pluginmanager.register(Grader(config.getoption("grade") or bool(path), path), "grader")


def exercise_of(item):
    """(number, depends) of the exercise the test `item` grades, or None for a test that grades none."""
    marks = [(int(m[1]), mark) for mark in item.iter_markers() if (m := EXERCISE_MARK.fullmatch(mark.name))]
    if not marks:
        return None
    if len({n for n, _ in marks}) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked for exercises {sorted({n for n, _ in marks})}; "
                                "a test grades one exercise (list the others in depends=[...])")
    n, mark = marks[0]
    depends = mark.kwargs.get("depends", [])
    if mark.args or set(mark.kwargs) - {"depends"} or not all(isinstance(d, int) and d != n for d in depends):
        raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.ex{n} or @pytest.mark.ex{n}(depends=[numbers "
                                f"of the other exercises it runs]); got {mark}")
    return n, sorted(depends)


def unfinished_exercise(exc):
    """The number of the exercise whose NotImplementedError `exc` is (or holds, in an ExceptionGroup), or None."""
    if isinstance(exc, NotImplementedError) and (m := UNFINISHED.match(str(exc))):
        return int(m[1])
    for inner in getattr(exc, "exceptions", ()):
        if (n := unfinished_exercise(inner)) is not None:
            return n
    return None


class Grader:
    """Collects every test's outcome; prints and writes the scores at the end."""

    def __init__(self, show, json_path):
        self.show, self.json_path = show, json_path
        self.tests = {}  # nodeid -> exercise, depends, outcome, and the exercise to blame if it failed unfinished
        self.collection_errors = []

    def pytest_collection_modifyitems(self, items):
        for item in items:
            exercise_of(item)  # refuse bad markers before anything runs

    def pytest_collectreport(self, report):
        if report.failed:
            last_line = str(report.longrepr).strip().splitlines()[-1].removeprefix("E").strip()
            self.collection_errors.append(f"{report.nodeid or '.'}: {last_line}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        exercise, depends = exercise_of(item) or (None, [])
        test = self.tests.setdefault(item.nodeid, dict(exercise=exercise, depends=depends, outcome="passed",
                                                       unfinished=None, message=""))
        if report.failed and test["outcome"] != "failed":
            exc = call.excinfo.value if call.excinfo else None
            first_line = str(exc).strip().split("\n")[0][:200]
            test.update(outcome="failed", unfinished=unfinished_exercise(exc),
                        message=f"{type(exc).__name__}: {first_line}" if exc else report.longreprtext[:200])
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"
        return report

    def scores(self):
        """One row per exercise: its points, the points possible, and what stands in the way."""
        functions = {}  # (exercise, test function) -> its cases that ran
        for nodeid, test in self.tests.items():
            if test["exercise"] is not None and test["outcome"] != "skipped":
                functions.setdefault((test["exercise"], nodeid.partition("[")[0]), []).append(test)
        failing = {key[0] for key, cases in functions.items() if any(c["outcome"] == "failed" for c in cases)}
        rows = []
        for n in sorted({n for n, _ in functions}):
            mine = {f: cases for (e, f), cases in functions.items() if e == n}
            failed = [(f, c) for f, cases in mine.items() for c in cases if c["outcome"] == "failed"]
            status = []
            if any(c["unfinished"] == n for _, c in failed):
                status.append("not done yet (NotImplementedError)")
            waits = sorted({c["unfinished"] for _, c in failed} - {n, None})
            if waits:
                status.append(f"waits for exercise {', '.join(map(str, waits))}")
            wrong = [(f, c) for f, c in failed if c["unfinished"] is None]
            if wrong:
                status.append(f"fails {', '.join(sorted({f.rpartition('::')[2] for f, _ in wrong}))}")
                suspects = sorted({d for _, c in wrong for d in c["depends"]} & failing)
                if suspects:  # a wrong result upstream can be the real cause
                    status[-1] += (f" (uses exercise {suspects[0]}, which fails too)" if len(suspects) == 1 else
                                   f" (uses exercises {', '.join(map(str, suspects))}, which fail too)")
            rows.append(dict(exercise=n, possible=len(mine), status="; ".join(status) or "done",
                             points=sum(all(c["outcome"] == "passed" for c in cases) for cases in mine.values())))
        return rows

    def ungraded(self):
        """How many tests that grade no exercise passed, failed, were skipped."""
        return dict(Counter(t["outcome"] for t in self.tests.values() if t["exercise"] is None))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        result = yield  # after pytest's own summary: the scores are the last thing a student reads
        if not self.show:
            return result
        write, rows = terminalreporter.write_line, self.scores()
        terminalreporter.section("scores")
        write(f"{'exercise':>8}   {'points':^7}   status")
        for row in rows:
            write(f"{row['exercise']:>8}   {row['points']:>3}/{row['possible']:<3}   {row['status']}")
        write(f"{'total':>8}   {sum(r['points'] for r in rows):>3}/{sum(r['possible'] for r in rows)}")
        ungraded = self.ungraded()
        if ungraded:
            write(f"(tests that grade no exercise: {', '.join(f'{v} {k}' for k, v in sorted(ungraded.items()))})")
        for error in self.collection_errors:
            write(f"NOT COLLECTED, its exercises are missing above: {error}", red=True)
        return result

    def pytest_sessionfinish(self, exitstatus):
        if self.json_path:
            rows = self.scores()
            save_json(self.json_path, dict(
                exercises=rows, points=sum(r["points"] for r in rows), possible=sum(r["possible"] for r in rows),
                tests={k: t for k, t in self.tests.items() if t["exercise"] is not None},
                ungraded=self.ungraded(), collection_errors=self.collection_errors,
                exit_status=int(exitstatus)))


# --- shared test data ------------------------------------------------------------------------------------

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
