"""Proof that grade_class.py grades a class with the instructor's tests, and that the grading
plugin's Gradescope and GitHub Classroom formats (tests/grading_formats.py) follow their schemas
with the totals of the plain --grade table.

One class of planted submissions is graded once (exercises 1 and 8 only, to stay fast): solved,
a syntax error, an endless loop, the untouched code with tests edited to `assert True`, a module
that writes outside its folder, a zip with an extra top folder and most modules missing, and a zip
whose member escapes its folder. Each student's folder holds the three formats of the same run.

    python tests/test_grade_class.py CLASS_DIR   # plants the five submissions of issue 23's check
"""
import csv
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE))  # when run as a script
from grade_class import (Refused, grade_class, main, submissions, unzip,  # noqa: E402
                         write_autograder)
from make_assignment import make_edition  # noqa: E402
from outputs import UserError  # noqa: E402
from conftest import POINTS  # noqa: E402

EXERCISES = [1, 8]
TEST_DEF = re.compile(r"^(def test_\w+\([^)]*\):\n)", re.MULTILINE)


def plant(folder, solved=True, changes=()):
    """A submission: the edition with every solution in place (or none), then `changes`:
    [(file, old text, new text)]."""
    make_edition(SOURCE, folder, force=True, exercises=[] if solved else None)
    for file, old, new in changes:
        text = (folder / file).read_text()
        assert text.count(old) == 1, f"{old!r} is not once in {file}"
        (folder / file).write_text(text.replace(old, new))
    return folder


def plant_class(folder):
    """Issue 23's five: solved, untouched, a syntax error, an endless loop, tests edited to pass."""
    plant(folder / "solved")
    plant(folder / "untouched", solved=False)
    plant(folder / "syntax-error", changes=[("unet.py", "    half = dim // 2\n",
                                             "    half = dim // 2)\n")])
    plant(folder / "endless-loop", changes=[("part1_inversion.py", "        opt.zero_grad()\n",
                                             "        while True:\n            pass\n")])
    edited = plant(folder / "edited-tests", solved=False)
    for test in (edited / "tests").glob("test_*.py"):
        test.write_text(TEST_DEF.sub(r"\1    assert True\n    return\n", test.read_text()))


def zip_folder(folder, path, prefix=""):
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The planted class, graded once: {student: its row of class.csv}, and the grades folder."""
    tmp = tmp_path_factory.mktemp("class")
    subs, outside = tmp / "submissions", tmp / "outside.txt"
    plant_class(subs)
    plant(subs / "endless-loop", changes=[("unet.py", "    half = dim // 2\n",
                                           "    while True:\n        pass\n")])  # exercise 8's
    os.rename(subs / "untouched", tmp / "untouched")  # the edited-tests student's code is so
    plant(subs / "writes-outside", changes=[(
        "part1_inversion.py", "    act = {",
        f"    open({str(outside)!r}, 'w').write('x')\n    act = {{")])
    partial = tmp / "partial"
    partial.mkdir()
    (partial / "part1_inversion.py").write_bytes((SOURCE / "part1_inversion.py").read_bytes())
    zip_folder(partial, subs / "partial.zip", prefix="lab-main/")
    with zipfile.ZipFile(subs / "escapes.zip", "w") as z:
        z.writestr("../escaped.py", "x = 1\n")
    before = {p: p.stat().st_mtime_ns for p in subs.rglob("*")}
    out = tmp / "grades"
    main([str(subs), f"--out={out}", "--exercises", *map(str, EXERCISES), "--test-timeout=3",
          "--jobs=2"])
    assert {p: p.stat().st_mtime_ns for p in subs.rglob("*")} == before  # nothing modified
    assert not outside.exists() and not (tmp / "escaped.py").exists()
    with open(out / "class.csv", newline="") as f:
        table = list(csv.DictReader(f))
    return {row["student"]: row for row in table}, out, [row["student"] for row in table]


def points(row):
    return {n: int(row[f"ex{n}/{POINTS[n]}"]) for n in EXERCISES}


def test_class_csv_has_a_row_each_with_its_reason(graded):
    rows, out, order = graded
    assert order == sorted(order) == sorted(["edited-tests", "endless-loop", "escapes", "partial",
                                             "solved", "syntax-error", "writes-outside"])
    full = {n: POINTS[n] for n in EXERCISES}
    assert points(rows["solved"]) == full and rows["solved"]["notes"] == "done"
    # the edited tests are not run: the student gets what their (untouched) code earns
    assert points(rows["edited-tests"]) == dict.fromkeys(EXERCISES, 0)
    assert "its own tests/ ignored" in rows["edited-tests"]["notes"]
    assert "ex1, 8: not done yet" in rows["edited-tests"]["notes"]
    assert points(rows["syntax-error"]) == {1: POINTS[1], 8: 0}
    assert "ex8: not collected: SyntaxError at unet.py:" in rows["syntax-error"]["notes"]
    assert points(rows["endless-loop"]) == {1: POINTS[1], 8: 0}
    assert "ex8: timed out after 3 s" in rows["endless-loop"]["notes"]
    assert points(rows["writes-outside"])[1] == 0 and points(rows["writes-outside"])[8] == POINTS[8]
    assert "refused: write outside the submission's folder" in rows["writes-outside"]["notes"]
    assert points(rows["partial"]) == {1: POINTS[1], 8: 0}
    assert "modules found in its folder lab-main/" in rows["partial"]["notes"]
    assert "missing autoencoder.py" in rows["partial"]["notes"]
    assert int(rows["escapes"]["total/6"]) == 0 and "would land outside its folder" in rows[
        "escapes"]["notes"]
    assert (out / "solved" / "grades.json").is_file() and not (out / "escapes").exists()


def table_of(printed):
    """{exercise: (points, possible)} and the total, read from the --grade table pytest printed."""
    rows = {int(m[1]): (int(m[2]), int(m[3]))
            for m in re.finditer(r"^\s+(\d+)\s+(\d+)/(\d+)\s", printed, re.MULTILINE)}
    total = re.search(r"^\s+total\s+(\d+)/(\d+)", printed, re.MULTILINE)
    return rows, (int(total[1]), int(total[2]))


@pytest.mark.parametrize("student", ["edited-tests", "solved", "syntax-error", "endless-loop"])
def test_gradescope_and_classroom_follow_their_schema_with_the_tables_totals(graded, student):
    _, out, _ = graded
    folder = out / student
    grades = json.loads((folder / "grades.json").read_text())
    table, total = table_of((folder / "pytest.txt").read_text())
    assert table == {r["exercise"]: (r["points"], r["possible"]) for r in grades["exercises"]}
    assert total == (grades["points"], grades["possible"])

    gs = json.loads((folder / "results.json").read_text())
    assert set(gs) >= {"score", "tests", "execution_time", "output", "visibility"}
    assert len(gs["tests"]) == len(POINTS)
    for t, r in zip(gs["tests"], grades["exercises"]):
        assert set(t) >= {"score", "max_score", "status", "name", "output", "execution_time",
                          "visibility"}
        assert (t["score"], t["max_score"]) == (r["points"], r["possible"])
        assert t["status"] == ("passed" if t["score"] == t["max_score"] else "failed")
        assert re.fullmatch(rf"Exercise {r['exercise']}: \S.*", t["name"]) and "(" not in t["name"]
        assert t["output"].splitlines()[0] == r["status"] and t["visibility"] == "visible"
        assert isinstance(t["execution_time"], float) and t["execution_time"] >= 0
    assert gs["score"] == sum(t["score"] for t in gs["tests"]) == total[0]

    stdout = (folder / "classroom.json").read_text()  # all that pytest wrote on stdout
    assert stdout.count("\n") == 1
    cr = json.loads(stdout)
    assert set(cr) == {"version", "status", "max_score", "tests"} and cr["version"] == 1
    assert cr["max_score"] == total[1] == len(cr["tests"])
    assert sum(t["score"] for t in cr["tests"]) == total[0]
    for t in cr["tests"]:
        assert {"name", "status", "score", "message"} <= set(t) and t["score"] in (0, 1)
        assert t["status"] == ("pass" if t["score"] else "fail") and isinstance(t["message"], str)
    expected = {"solved": "fail", "edited-tests": "fail", "syntax-error": "error",
                "endless-loop": "fail"}[student]  # "pass" only with all 49: 3 exercises were run
    assert cr["status"] == expected


def test_exercise_6_is_named_as_the_issue_asks(graded):
    gs = json.loads((graded[1] / "solved" / "results.json").read_text())
    assert gs["tests"][5]["name"] == "Exercise 6: one DDPM sampling step"


def test_a_submission_over_the_wall_clock_limit_is_stopped(tmp_path):
    """A module that loops on import is stopped at --timeout, and its row says so."""
    sub = plant(tmp_path / "class" / "looping", solved=False,
                changes=[("unet.py", "import math\n", "import math\nwhile True:\n    pass\n")])
    rows = grade_class(sub.parent, tmp_path / "grades", exercises=[8], timeout=3)
    assert rows["looping"]["points"] == {} or not any(rows["looping"]["points"].values())
    assert "stopped after 3 s" in "; ".join(rows["looping"]["notes"])


@pytest.mark.parametrize("member", ["../x.py", "/abs/x.py", "a/../../x.py", "C:/x.py", "..\\x.py",
                                    "link.py"])
def test_a_zip_member_that_would_land_outside_is_refused(tmp_path, member):
    info = zipfile.ZipInfo(member)
    if member == "link.py":
        info.external_attr = (stat.S_IFLNK | 0o777) << 16  # a symbolic link to /etc/passwd
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as z:
        z.writestr(info, "/etc/passwd" if member == "link.py" else "x = 1\n")
    with pytest.raises(Refused, match="outside its folder|symbolic link"):
        unzip(tmp_path / "s.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x.py").exists()


def test_bad_paths_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        submissions(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds no submission"):
        submissions(tmp_path)
    with pytest.raises(UserError, match="name a .zip file"):
        write_autograder(tmp_path / "autograder.tar")


@pytest.mark.e2e
def test_gradescope_autograder_runs_a_submission(tmp_path):
    """The autograder zip, unpacked where Gradescope would and run on a submission of two solved
    modules, for exercises 1 and 8 only (setup.sh installs the requirements: here the running
    Python stands in)."""
    write_autograder(tmp_path / "autograder.zip", test_timeout=60)
    ag = tmp_path / "autograder"
    with zipfile.ZipFile(tmp_path / "autograder.zip") as z:
        z.extractall(ag / "source")
        assert {"setup.sh", "run_autograder", "lab/pytest.ini", "lab/tests/conftest.py"} <= set(
            z.namelist()) and "grade_class.py" not in " ".join(z.namelist())
    assert "requirements.txt" in (ag / "source" / "setup.sh").read_text()
    sub = ag / "submission" / "my-lab"
    sub.mkdir(parents=True)
    for f in ("part1_inversion.py", "unet.py"):
        (sub / f).write_bytes((SOURCE / f).read_bytes())
    done = subprocess.run(["bash", str(ag / "source" / "run_autograder"), "-m", "ex1 or ex8",
                           "tests/test_part1.py", "tests/test_unet.py"], capture_output=True,
                          text=True, timeout=600, env=dict(
                              os.environ, AUTOGRADER=str(ag), PYTHON=sys.executable,
                              MPLBACKEND="Agg"))
    result = json.loads((ag / "results" / "results.json").read_text())
    by = {t["number"]: t for t in result["tests"]}
    assert by["1"]["score"] == POINTS[1] and by["8"]["score"] == POINTS[8], done.stdout[-3000:]
    assert by["4"]["score"] == 0 and result["score"] == sum(t["score"] for t in result["tests"])


if __name__ == "__main__":
    plant_class(Path(sys.argv[1]))
