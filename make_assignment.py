"""Make the student edition of the lab: the same files, with each exercise's solution taken out.

    python make_assignment.py ../lab-student          # write the student edition there
    python make_assignment.py ../lab-student --force  # ... even though that folder is not empty
    python make_assignment.py ../lab-week2 --exercises 3 4  # take out only exercises 3 and 4

An exercise is a region of the reference code between two comment lines, the first followed by
a hint of one or more `# HINT:` lines:

    # BEGIN EXERCISE 4: the forward process q(x_t | x_0)
    # HINT: Eq. 9; self._at(table, t, x0) is table[t], shaped to broadcast against x0
    return (...)                     <- the solution: every line up to END
    # END EXERCISE

The edition keeps the comment lines (every hint line among them) and puts in place of the
solution, at the indentation of BEGIN,

    raise NotImplementedError("Exercise 4: Eq. 9; self._at(table, t, x0) is table[t], shaped ...")

so an unfinished exercise fails its tests with its own message (a hint of several lines is
joined into one). Everything else is copied unchanged:
the modules, tests/ (with the grading plugin, tests/conftest.py, and the stored numbers the graded
tests compare with, tests/reference_values.json), pytest.ini, requirements.txt, .gitignore, the
reference checkpoint, and README.md and HANDOUT.md without their instructors' blocks (the lines from
`<!-- BEGIN INSTRUCTORS -->` to `<!-- END INSTRUCTORS -->`). Left behind: this script and its test,
tests/test_assignment.py, bench.py and tests/test_bench.py, tests/test_reference_values.py
(it writes the exercises' formulas out), and the documents with answers or measured results
(LAB.md, INSTRUCTORS.md, BENCHMARKS.md, figures/). Tests say which exercise they grade with
@pytest.mark.exN (see tests/conftest.py); students run `python -m pytest --grade`.

The exercise numbers are fixed, so that adding an exercise never renumbers another:
     1  Part 1: the 1-3-3-1 MLP                           part1_inversion.py   make_mlp
     2  Part 1: one training step                         part1_inversion.py   fit (its closure)
     3  the beta schedules                                schedule.py   make_betas
     4  the forward process q(x_t | x_0)                  schedule.py   Schedule.q_sample
     5  the posterior q(x_{t-1} | x_t, x_0)               schedule.py   Schedule.q_posterior
     6  one DDPM sampling step (Algorithm 2)              schedule.py   Schedule.p_sample
     7  one DDIM step                                     schedule.py   Schedule.ddim_step
     8  the timestep embedding                            unet.py       timestep_embedding
     9  the residual block                                unet.py       ResBlock.forward
    10  the training loss (Algorithm 1)                   part2_diffusion.py   training_loss
    11  Part 3: cross-attention                           unet.py       CrossAttention.forward
    12  Part 3: classifier-free guidance                  schedule.py   guided_eps
A new exercise takes the next free number (13, ...) and a line in pytest.ini's `markers`.
"""
import ast
import io
import json
import re
import tokenize
from collections import namedtuple
from pathlib import Path

from outputs import UserError, arg_parser, atomic_write, check_writable, run_main

SOURCE = Path(__file__).resolve().parent
TOP_FILES = ("README.md", "HANDOUT.md", "requirements.txt", "pytest.ini", ".gitignore",
             "reference/checkpoint.pt", "tests/reference_values.json")
# Left out: the answers (LAB.md), the grading manual (INSTRUCTORS.md), the measured tables and
# their figures (BENCHMARKS.md, figures/: they answer the discussion questions), the maintainer's
# tools, and the tests that spell the exercises' formulas out (tests/test_reference_values.py, which
# makes the stored numbers the graded tests compare with).
INSTRUCTORS_ONLY = ("make_assignment.py", "bench.py", "tests/test_assignment.py",
                    "tests/test_reference_values.py", "grade_class.py", "tests/test_grade_class.py",
                    "tests/test_bench.py")
# Lines of a markdown file from BEGIN to END (both included) are for instructors: the edition drops
# them.
INSTRUCTORS_BLOCK = re.compile(r"^<!-- BEGIN INSTRUCTORS -->\n.*?^<!-- END INSTRUCTORS -->\n",
                               re.MULTILINE | re.DOTALL)

BEGIN = re.compile(r"# BEGIN EXERCISE (\d+): (\S.*)")
HINT = re.compile(r"# HINT: (\S.*)")
END = re.compile(r"# END EXERCISE")
MARKER = re.compile(r"#\s*(BEGIN|END)\s+EXERCISE\b",
                    re.IGNORECASE)  # must then be one of the two above

# begin, end: 0-based indices of the BEGIN and END lines; start: of the first line after the hint
# lines, so that the solution is lines[start:end]; hint: the hint lines' text, joined by spaces
Region = namedtuple("Region", "number title hint indent begin end start")


def edition_files(src):
    """The files of the student edition, as paths relative to the folder `src`."""
    files = [Path(name) for name in TOP_FILES if (src / name).is_file()]
    files += [path.relative_to(src)
              for path in sorted(src.glob("*.py")) + sorted(src.glob("tests/*.py"))]
    return [f for f in files if f.as_posix() not in INSTRUCTORS_ONLY]


def for_students(text):
    """The markdown `text` without its instructors' blocks (see INSTRUCTORS_BLOCK)."""
    return INSTRUCTORS_BLOCK.sub("", text)


def find_regions(name, text):
    """The exercise regions of the Python source `text` (of file `name`), in order.

    Raises UserError, naming the file and line, for a marker that is malformed, unbalanced, nested,
    not followed by a hint, or outside a function (there its `raise` would run on import)."""
    if not MARKER.search(text):
        return []  # most files: no need to tokenize them
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        functions = [(node.lineno, node.end_lineno) for node in ast.walk(ast.parse(text))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except (SyntaxError, tokenize.TokenError) as e:
        raise UserError(f"{name}: cannot read it as Python ({e})")
    lines = text.splitlines(keepends=True)
    regions, begin = [], None
    for token in tokens:
        # only comments alone on their line can be markers
        if token.type != tokenize.COMMENT or token.line[:token.start[1]].strip():
            continue
        i, comment, indent = token.start[0] - 1, token.string.rstrip(), token.line[:token.start[1]]
        where = f"{name}:{i + 1}"
        if not MARKER.match(comment):
            continue
        if m := BEGIN.fullmatch(comment):
            if begin:
                raise UserError(f"{where}: BEGIN EXERCISE {m[1]} inside exercise {begin.number} "
                                f"(begun at line {begin.begin + 1}); exercises cannot nest")
            hints, k = [], i + 1
            while k < len(lines) and (hint := HINT.fullmatch(lines[k].strip())):
                hints.append(hint[1])
                k += 1
            if not hints:
                raise UserError(f"{where}: BEGIN EXERCISE {m[1]} must be followed by "
                                "a '# HINT: ...' line")
            begin = Region(int(m[1]), m[2], " ".join(hints), indent, i, None, k)
        elif END.fullmatch(comment):
            if not begin:
                raise UserError(f"{where}: END EXERCISE without a BEGIN EXERCISE before it")
            if indent != begin.indent:
                raise UserError(f"{where}: END EXERCISE is not indented like its BEGIN "
                                f"(line {begin.begin + 1})")
            code = [k for k in range(begin.start, i)
                    if lines[k].strip() and not lines[k].strip().startswith("#")]
            if not code:
                raise UserError(f"{where}: exercise {begin.number} has no code between its HINT "
                                "and END lines")
            outside = [k for k in code if len(lines[k]) - len(lines[k].lstrip()) < len(indent)]
            if outside:
                raise UserError(f"{name}:{outside[0] + 1}: this line of exercise {begin.number} "
                                f"is indented less than its BEGIN (line {begin.begin + 1}); "
                                "a region must stay inside one block")
            if not any(first < code[0] + 1 <= last for first, last in functions):
                raise UserError(f"{name}:{begin.begin + 1}: exercise {begin.number} is not inside "
                                "a function; its `raise` would run on import")
            regions.append(begin._replace(end=i))
            begin = None
        else:
            raise UserError(f"{where}: malformed exercise marker {comment!r}; "
                            "write '# BEGIN EXERCISE N: title' or '# END EXERCISE'")
    if begin:
        raise UserError(f"{name}:{begin.begin + 1}: BEGIN EXERCISE {begin.number} "
                        "has no END EXERCISE")
    return regions


def replace_bodies(name, text, bodies):
    """`text` with the solution of each exercise n in `bodies` replaced by the lines bodies[n]."""
    lines, out, done = text.splitlines(keepends=True), [], 0
    for r in find_regions(name, text):
        solution = lines[r.start:r.end]
        out += lines[done:r.start] + bodies.get(r.number, solution)
        done = r.end
    return "".join(out + lines[done:])


def solutions(name, text):
    """{exercise number: the lines of its solution} of the reference source `text`."""
    lines = text.splitlines(keepends=True)
    return {r.number: lines[r.start:r.end] for r in find_regions(name, text)}


def unfinished(region):
    """The line that stands in for the solution in the student edition."""
    # A JSON string is also a valid Python string literal, with every quote and backslash escaped.
    message = json.dumps(f"Exercise {region.number}: {region.hint}", ensure_ascii=False)
    return [f"{region.indent}raise NotImplementedError({message})\n"]


def make_edition(src, out, force=False, exercises=None):
    """Write the student edition of the reference tree `src` into the folder `out`.

    Takes out the exercises numbered in `exercises` (default: all). Everything is checked before
    anything is written. Returns the exercises taken out, as (number, "file:line", title), in number
    order."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if out == src or src in out.parents:
        raise UserError(f"the output folder {out} lies inside the source tree {src}; "
                        "choose a folder outside it")
    if out in src.parents:
        raise UserError(f"the output folder {out} holds the source tree {src}; "
                        "choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose a folder for the student edition")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty; choose an empty folder, "
                        "or add --force to write the edition over it")

    files, found = {}, {}
    for rel in edition_files(src):
        files[rel] = (src / rel).read_bytes()
        if rel.suffix == ".py":
            for r in find_regions(rel.as_posix(), files[rel].decode()):
                where = f"{rel.as_posix()}:{r.begin + 1}"
                if r.number in found:
                    raise UserError(f"{where}: exercise {r.number} is already used at "
                                    f"{found[r.number][0]}; give each exercise its own number")
                found[r.number] = (where, r)
    wanted = set(found) if exercises is None else set(exercises)
    if wanted - set(found):
        raise UserError(f"there is no exercise {min(wanted - set(found))}; the exercises are "
                        f"{', '.join(map(str, sorted(found))) or 'none'}")

    for rel, data in files.items():
        if rel.suffix == ".md":
            files[rel] = for_students(data.decode()).encode()
        if rel.suffix == ".py":
            name, text = rel.as_posix(), data.decode()
            bodies = {r.number: unfinished(r) for r in find_regions(name, text)
                      if r.number in wanted}
            files[rel] = replace_bodies(name, text, bodies).encode()
            try:
                compile(files[rel], name, "exec")
            except SyntaxError as e:
                raise UserError(f"{name}:{e.lineno}: the student edition of this file "
                                f"would not compile ({e.msg})")

    check_writable(out, "OUT_DIR")  # a read-only place fails here, before the first file is written
    for rel, data in files.items():
        atomic_write(out / rel, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return [(n, found[n][0], found[n][1].title) for n in sorted(wanted)]


def main(argv=None):
    parser = arg_parser(
        description="Write the student edition of the lab: the same files, with the solution of "
                    "each exercise (a region between '# BEGIN EXERCISE N' and '# END EXERCISE') "
                    "replaced by a NotImplementedError.")
    parser.add_argument("out", metavar="OUT_DIR",
                        help="the folder to write the edition to (outside this one)")
    parser.add_argument("--force", action="store_true",
                        help="write into OUT_DIR even if it is not empty: the edition's files are "
                             "replaced, other files there are left alone")
    parser.add_argument("--exercises", type=int, nargs="+", metavar="N",
                        help="take out only these exercises (default: all); the others keep their "
                             "solution")
    args = parser.parse_args(argv)
    taken_out = make_edition(SOURCE, args.out, force=args.force, exercises=args.exercises)
    print(f"wrote the student edition to {Path(args.out).resolve()}; exercises taken out:")
    for number, where, title in taken_out:
        print(f"  {number:>2}  {where:<22} {title}")
    print(f"students run:   cd {args.out} && python -m pytest --grade")
    print("you grade with: python -m pytest --grade-json=grades.json   (in the student's copy)")


if __name__ == "__main__":
    run_main(main)
