"""The grades in the formats of the platforms that grade a class, for tests/conftest.py's grader.

    python -m pytest --grade-gradescope=results.json   # Gradescope's results.json
    python -m pytest --grade-classroom                 # GitHub Classroom's runner result, on stdout

Both grade as --grade does (the graded tests only, the same points) and add no test of their own.

Gradescope (its autograder "specs"): one entry of `tests` per exercise, named as pytest.ini's marker
names it ("Exercise 6: one DDPM sampling step"), with `score`, `max_score`, `status` ("passed" when
every point is earned, else "failed"), `output` (the table's status and the one-line reasons),
`execution_time` (seconds) and `visibility`; the top-level `score` is their sum.

GitHub Classroom (the runner result that classroom-resources/autograding-grading-reporter decodes):
`{"version": 1, "status": "pass" | "fail" | "error", "max_score": N, "tests": [...]}` with one entry
per graded test function, `score` 1 or 0, as --grade counts points: the reporter adds up
`tests[].score`, so its total is --grade's. An exercise whose tests could not run gets one entry per
missing point, score 0, with the reason. With --grade-classroom everything pytest prints goes to
stderr, and stdout holds the JSON alone, written when the run ends: pipe it to `base64 -w0`.
"""
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from outputs import UserError, check_writable, save_json

TITLE = re.compile(r"ex(\d+): grades exercise \d+, (.*?)(?: \([^()]*\))?$")


def wanted(config):
    return bool(config.getoption("grade_gradescope") or config.getoption("grade_classroom"))


def titles(config):
    """{exercise: its title}, from pytest.ini's markers: 'ex6: grades exercise 6, one DDPM sampling
    step (schedule.py, p_sample)' gives 'one DDPM sampling step'."""
    return {int(m[1]): m[2] for line in config.getini("markers")
            if (m := TITLE.match(line.strip()))}


def functions(tests, n):
    """{test function: its cases that ran} of exercise n: the points, as the grader counts them."""
    out = {}
    for nodeid, test in tests.items():
        if test["exercise"] == n and test["outcome"] != "skipped":
            out.setdefault(nodeid.partition("[")[0], []).append(test)
    return out


def gradescope(rows, failures, titles, seconds):
    """Gradescope's results.json, as a dict: one test per exercise. `failures`: the grader's
    (exercise, test, message) of each failing test function; `seconds`: {exercise: its time}."""
    entries = []
    for r in rows:
        n = r["exercise"]
        reasons = [f"{name}: {message}" for e, name, message in failures if e == n]
        entries.append(dict(
            name=f"Exercise {n}: {titles.get(n, '')}".rstrip(": "), number=str(n),
            score=r["points"], max_score=r["possible"],
            status="passed" if r["points"] == r["possible"] else "failed",
            output="\n".join([r["status"], *reasons]),
            execution_time=round(seconds.get(n, 0.0), 3), visibility="visible"))
    return dict(score=sum(e["score"] for e in entries), tests=entries, visibility="visible",
                execution_time=round(sum(seconds.values()), 3), stdout_visibility="hidden")


def classroom(rows, tests, errors):
    """GitHub Classroom's runner result, as a dict: one test per graded test function."""
    entries = []
    for r in rows:
        n, mine = r["exercise"], functions(tests, r["exercise"])
        for f, cases in sorted(mine.items()):
            passed = all(c["outcome"] == "passed" for c in cases)
            message = next((c["message"] for c in cases if c["outcome"] == "failed"), "")
            entries.append(dict(name=f"ex{n} {f.rpartition('::')[2]}",
                                filename=f.partition("::")[0], score=int(passed),
                                status="pass" if passed else "fail",
                                message=message or ("" if passed else "failed")))
        missing = r["possible"] - len(mine)
        entries += [dict(name=f"ex{n} test not run ({k + 1} of {missing})", status="fail", score=0,
                         message=r["status"]) for k in range(missing)]
    possible = sum(r["possible"] for r in rows)
    status = "error" if errors else "pass" if all(e["score"] for e in entries) else "fail"
    return dict(version=1, status=status, max_score=possible, tests=entries)


class Formats:
    """Writes --grade-gradescope's file when the run ends, and --grade-classroom's JSON after
    everything else pytest prints."""

    def __init__(self, config, grader):
        self.config, self.grader, self.durations = config, grader, Counter()
        self.gradescope_path = config.getoption("grade_gradescope")
        if self.gradescope_path:
            self.gradescope_path = Path(config.invocation_params.dir, self.gradescope_path)
            try:
                check_writable(self.gradescope_path.parent)
            except UserError:
                raise pytest.UsageError(f"--grade-gradescope={self.gradescope_path}: cannot write "
                                        f"in {self.gradescope_path.parent}; choose another place")
        self.stdout = None
        if config.getoption("grade_classroom"):
            # pytest's reporter, created after this, writes to what sys.stdout is now: stderr.
            self.stdout, sys.stdout = sys.stdout, sys.stderr
        self.result = None

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] += report.duration

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self):
        self.grader.close_running()
        rows, tests = self.grader.scores(), self.grader.tests
        if self.gradescope_path:
            seconds = Counter()
            for nodeid, d in self.durations.items():
                seconds[tests.get(nodeid, {}).get("exercise")] += d
            result = gradescope(rows, self.grader.failures(), titles(self.config), seconds)
            notes = self.grader.collection_errors + ([f"interrupted ({self.grader.interrupted})"]
                                                     if self.grader.interrupted else [])
            result["output"] = "\n".join(
                [f"{result['score']}/{sum(r['possible'] for r in rows)} points", *notes])
            save_json(self.gradescope_path, result)
        if self.stdout:
            errors = self.grader.collection_errors or self.grader.interrupted
            self.result = classroom(rows, tests, errors)

    def pytest_unconfigure(self):
        if self.stdout:
            sys.stdout = self.stdout
            if self.result is not None:
                sys.stdout.write(json.dumps(self.result) + "\n")
                sys.stdout.flush()
