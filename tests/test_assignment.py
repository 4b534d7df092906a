"""Proof that make_assignment.py writes a working student edition, and that tests/conftest.py grades it.

Issue 7's three claims, checked on the real reference code with editions written into temporary folders:
  (a) the student edition imports;
  (b) each exercise's tests fail there with that exercise's own NotImplementedError, and the tests of the
      other exercises pass unless they declare that they run its code (depends=[...]);
  (c) putting the reference solutions back gives the reference, byte for byte.
Then the refusals: bad markers, a number used twice, an output folder inside the source tree or not empty.

(b) runs pytest on several editions. Each run in its own process would import torch again, seconds apiece
on a busy CPU, so one subprocess (this file run as a script: `drive`) runs them all in turn and writes what
the grading plugin recorded. To save time those runs leave out the SLOW tests; students run them all.
"""
import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, settings

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE))  # when run as a script; under pytest, pytest.ini already does this
from make_assignment import (edition_files, find_regions, for_students, make_edition,  # noqa: E402
                             replace_bodies, solutions)
from outputs import UserError  # noqa: E402

SLOW = ["test_ddpm_samples_gaussian_data"]  # graded like every other test; only left out of the runs here
MARK = re.compile(r"\bmark\.ex(\d+)\b")


# --- the subprocess: pytest on one edition after another -------------------------------------------------

def graded_test_files(root):
    return [path for path in sorted((root / "tests").glob("test_*.py")) if MARK.search(path.read_text())]


def forget(*roots):
    """Drop the lab's modules imported from `roots` (their top folder and tests/), so that the next
    edition's schedule.py, conftest.py, test_schedule.py... are imported afresh instead of the cached ones
    of an earlier edition. Only those two folders: a virtual environment inside the checkout (.venv/)
    holds numpy and torch, which cannot be imported twice."""
    folders = {folder.resolve() for root in roots for folder in (Path(root), Path(root) / "tests")}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name != "__main__" and file and Path(file).resolve().parent in folders:
            del sys.modules[name]


def import_all(root):
    """{module: its error} for every module of the edition at `root` that fails to import."""
    errors = {}
    sys.path.insert(0, str(root))
    for path in sorted(root.glob("*.py")):
        try:
            importlib.import_module(path.stem)
        except Exception as e:
            errors[path.stem] = f"{type(e).__name__}: {e}"
    sys.path.remove(str(root))
    return errors


def run_graded(root, exercises):
    """Run the tests of `exercises` on the edition at `root`; return what the grading plugin wrote."""
    grades = root / "grades.json"
    pytest.main([*map(str, graded_test_files(root)), "--tb=no", "--assert=plain", "-p", "no:cacheprovider",
                 "-m", " or ".join(f"ex{n}" for n in exercises), "-k", " and ".join(f"not {t}" for t in SLOW),
                 "--grade-json", str(grades)])
    return json.loads(grades.read_text())


def independent_groups(depends):
    """Group the exercises so that no test of a group's member runs the code of another member; few groups
    (a greedy colouring of the dependency graph), so that (b) needs few runs."""
    groups = []
    for n in sorted(depends):
        group = next((g for g in groups if not any(n in depends[m] or m in depends[n] for m in g)), None)
        if group is None:
            groups.append([n])
        else:
            group.append(n)
    return groups


def drive(src, work):
    """Write the full edition and import it; run the graded tests on it; then, for each independent group of
    exercises, write an edition with only that group taken out and run them there. Saves work/results.json."""
    # Failing hypothesis tests would spend seconds shrinking and explaining their examples: not needed here.
    settings.register_profile("proof", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
    settings.load_profile("proof")
    regions = [n for n, _, _ in make_edition(src, work / "edition")]
    marked = sorted({int(n) for path in graded_test_files(work / "edition") for n in MARK.findall(path.read_text())})
    forget(src, work)
    results = dict(regions=regions, marked=marked, modules=[p.stem for p in sorted((work / "edition").glob("*.py"))],
                   import_errors=import_all(work / "edition"), runs=[])
    forget(src, work)
    full = run_graded(work / "edition", marked)
    results["runs"].append(dict(taken_out=regions, grades=full))
    depends = {n: set() for n in regions}
    for test in full["tests"].values():
        if test["exercise"] in depends:  # tests of an exercise without a region: see the first test below
            depends[test["exercise"]].update(test["depends"])
    for group in independent_groups(depends):
        folder = work / f"without-{'-'.join(map(str, group))}"
        make_edition(src, folder, exercises=group)
        forget(src, work)
        results["runs"].append(dict(taken_out=group, grades=run_graded(folder, marked)))
    (work / "results.json").write_text(json.dumps(results))


# --- (a) and (b) ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("editions")
    done = subprocess.run([sys.executable, __file__, str(SOURCE), str(work)], cwd=work, capture_output=True,
                          text=True, env=dict(os.environ, MPLBACKEND="Agg"), timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    results = json.loads((work / "results.json").read_text())
    results["stdout"] = done.stdout
    return results


def test_every_exercise_has_code_and_tests(results):
    assert results["regions"], "no '# BEGIN EXERCISE' regions found in the reference"
    assert results["regions"] == results["marked"], (
        f"exercises with a region in the code: {results['regions']}; with @pytest.mark.exN tests: {results['marked']}")


def test_edition_imports(results):
    assert "schedule" in results["modules"] and not results["import_errors"], results["import_errors"]


def test_unfinished_exercises_fail_with_their_own_message(results):
    """In the full edition every graded test fails, and it fails in the NotImplementedError of its own
    exercise or of one it declares it depends on: never in an obscure error elsewhere."""
    grades = results["runs"][0]["grades"]
    wrong = [f"{nodeid}: {test['outcome']} {test['message']}" for nodeid, test in grades["tests"].items()
             if test["outcome"] != "failed" or test["unfinished"] not in [test["exercise"], *test["depends"]]]
    assert grades["tests"]
    assert not wrong, "\n".join(wrong)
    assert grades["points"] == 0 and {row["exercise"] for row in grades["exercises"]} == set(results["regions"])
    for row in grades["exercises"]:  # the table blames the exercise that is missing
        own = [t for t in grades["tests"].values() if t["exercise"] == t["unfinished"] == row["exercise"]]
        assert ("not done yet" in row["status"]) == bool(own), row
    assert re.search(r"=+ scores =+\n\s*exercise\s+points\s+status\n", results["stdout"])
    assert re.search(rf"\n\s+total\s+0/{grades['possible']}\n", results["stdout"])


def test_each_exercise_taken_out_breaks_only_its_own_tests(results):
    """With a group of mutually independent exercises taken out, each of their tests fails with its own
    exercise's message, and every other test passes unless it declared a dependency on one of them."""
    wrong = []
    for run in results["runs"][1:]:
        out = set(run["taken_out"])
        for nodeid, test in run["grades"]["tests"].items():
            excused = out & set(test["depends"])
            if test["exercise"] in out:
                ok = test["outcome"] == "failed" and test["unfinished"] == test["exercise"]
            else:
                ok = test["outcome"] == "passed" or (excused and test["unfinished"] in excused)
            if not ok:
                wrong.append(f"without exercises {sorted(out)}: {nodeid} (exercise {test['exercise']}, depends "
                             f"{test['depends']}) {test['outcome']}: {test['message']}")
    taken_out = sorted(n for run in results["runs"][1:] for n in run["taken_out"])
    assert not wrong, "\n".join(wrong)
    assert taken_out == results["regions"]  # each exercise was taken out once


# --- (c) --------------------------------------------------------------------------------------------------

def test_solutions_put_back_give_the_reference(tmp_path):
    taken_out = make_edition(SOURCE, tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(edition_files(SOURCE)) and Path("tests/conftest.py") in written
    names = {p.as_posix() for p in written}
    assert not {"make_assignment.py", "bench.py", "tests/test_assignment.py", "LAB.md"} & names
    assert {"README.md", "HANDOUT.md", "reference/checkpoint.pt"} <= names
    changed = 0
    for rel in written:
        reference, edition = (SOURCE / rel).read_bytes(), (tmp_path / rel).read_bytes()
        if rel.suffix == ".md":  # the instructors' blocks are left out, and nothing else changes
            assert "INSTRUCTORS -->" not in edition.decode()
            reference = for_students(reference.decode()).encode()
        if rel.suffix == ".py":
            name, text = rel.as_posix(), edition.decode()
            for r in find_regions(name, text):  # each solution is one raise, at the indentation of BEGIN
                [line] = text.splitlines()[r.begin + 2:r.end]
                [statement] = ast.parse(line.strip()).body
                assert line.startswith(r.indent + "raise ") and ast.literal_eval(statement.exc.args[0]) == (
                    f"Exercise {r.number}: {r.hint}") and statement.exc.func.id == "NotImplementedError", line
            edition = replace_bodies(name, text, solutions(name, reference.decode())).encode()
            changed += edition != (tmp_path / rel).read_bytes()
        assert edition == reference, rel
    assert changed == len({where.partition(":")[0] for _, where, _ in taken_out}) > 0


# --- bad input --------------------------------------------------------------------------------------------

GOOD = '''def f(x):
    # BEGIN EXERCISE 1: double it
    # HINT: x + x
    return 2 * x
    # END EXERCISE
'''


@pytest.mark.parametrize("source,fragments", [
    (GOOD.replace("    # END EXERCISE\n", ""), ["a.py:2", "BEGIN EXERCISE 1 has no END"]),
    (GOOD.replace("    # BEGIN EXERCISE 1: double it\n", ""), ["a.py:4", "END EXERCISE without a BEGIN"]),
    (GOOD.replace("    return 2 * x\n", "    # BEGIN EXERCISE 2: twice\n    # HINT: h\n    return 2 * x\n"
                  "    # END EXERCISE\n"), ["a.py:4", "BEGIN EXERCISE 2 inside exercise 1", "cannot nest"]),
    (GOOD.replace("    # HINT: x + x\n", ""), ["a.py:2", "'# HINT: ...'"]),
    (GOOD.replace("    # END EXERCISE\n", "  # END EXERCISE\n"), ["a.py:5", "not indented like its BEGIN (line 2)"]),
    (GOOD.replace("    return 2 * x\n", "    # only a comment\n").replace("def f(x):\n", "def f(x):\n    y = x\n"),
     ["a.py:6", "exercise 1 has no code"]),
    (GOOD.replace("# END EXERCISE", "# END EXERCISE 1"), ["a.py:5", "malformed", "'# END EXERCISE'"]),
    (GOOD.replace("1: double it", "one: double it"), ["a.py:2", "malformed", "BEGIN EXERCISE N: title"]),
    ("# BEGIN EXERCISE 1: all\n# HINT: h\nx = 1\n# END EXERCISE\n", ["a.py:1", "not inside a function", "import"]),
    (GOOD.replace("return 2 * x", "return (2 *"), ["a.py", "cannot read it as Python"]),
])
def test_bad_markers_name_file_and_line_and_write_nothing(tmp_path, source, fragments):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(source)
    with pytest.raises(UserError) as error:
        make_edition(tmp_path / "src", tmp_path / "out")
    assert all(f in str(error.value) for f in fragments), (str(error.value), fragments)
    assert not (tmp_path / "out").exists()


def test_number_used_twice_names_both_places(tmp_path):
    (tmp_path / "src" / "tests").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text(GOOD)
    (tmp_path / "src" / "tests" / "b.py").write_text("\n" + GOOD)
    with pytest.raises(UserError, match=r"tests/b\.py:3: exercise 1 is already used at a\.py:2"):
        make_edition(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_folder_refusals(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(GOOD)
    for out, message in [(src / "student", "inside the source tree"), (src, "inside the source tree"),
                         (tmp_path, "holds the source tree")]:
        with pytest.raises(UserError, match=message):
            make_edition(src, out)
    assert sorted(p.name for p in src.iterdir()) == ["a.py"]
    with pytest.raises(UserError, match="no exercise 7; the exercises are 1"):
        make_edition(src, tmp_path / "out", exercises=[7])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        make_edition(src, tmp_path / "out")
    assert make_edition(src, tmp_path / "out", force=True) == [(1, "a.py:2", "double it")]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # --force replaces only the edition's files
    assert 'raise NotImplementedError("Exercise 1: x + x")' in (tmp_path / "out" / "a.py").read_text()


def test_command_line_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SOURCE / "make_assignment.py"), str(SOURCE / "tests" / "student")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert not (SOURCE / "tests" / "student").exists()


if __name__ == "__main__":
    drive(Path(sys.argv[1]), Path(sys.argv[2]))
