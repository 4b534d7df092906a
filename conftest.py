"""The grading plugin's command-line options (the plugin itself is tests/conftest.py).

They are declared here, in the top folder, because pytest reads this file whatever it is asked to
run. Declared in tests/, `--grade-json grades.json` (with a space) broke once grades.json existed:
pytest took the file for a test path, never read tests/, and stopped at the option it did not know.
The spaced form is refused, always, in one line that names the spelling that works:
--grade-json=FILE.
"""
import pytest

GRADE_TIMEOUT = 60  # seconds per test phase; the slowest graded test: ~2 s on a busy 2-core laptop


def pytest_addoption(parser):
    group = parser.getgroup("grading")
    group.addoption("--grade", action="store_true",
                    help="run the graded tests only, then print each exercise's points")
    group.addoption("--grade-json", metavar="FILE",
                    help="as --grade, and write each exercise's points to FILE as JSON; write it "
                         "with '=': --grade-json=grades.json")
    group.addoption("--grade-timeout", type=float, default=GRADE_TIMEOUT, metavar="SECONDS",
                    help="when grading, fail a test phase that runs longer "
                         f"(default {GRADE_TIMEOUT})")
    group.addoption("--grade-gradescope", metavar="FILE",
                    help="as --grade, and write Gradescope's results.json to FILE; write it with "
                         "'=': --grade-gradescope=results.json")
    group.addoption("--grade-classroom", action="store_true",
                    help="as --grade, and print GitHub Classroom's runner result (JSON) on stdout; "
                         "pytest's own output goes to stderr")


FILE_OPTIONS = ("--grade-json", "--grade-gradescope")  # options naming a file: with '=' only


def pytest_configure(config):
    args = [str(a) for a in config.invocation_params.args]
    for option in FILE_OPTIONS:
        if option in args:
            value = args[args.index(option) + 1:][:1] or ["FILE"]
            raise pytest.UsageError(f"write {option}={value[0]} (with '=', no space): spaced, "
                                    "pytest takes the file for a test path once it exists")
