"""The map of the house: imports flow one way (DEVELOPERS' map, issue 22).

schedule.py (the math) and unet.py (the model) know nothing of each other; the run machinery
(runs.py, flags.py, outputs.py, ddp.py) imports no script; and no two top-level files import each
other, directly or around a circle. Read from the source with ast: nothing is imported here."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {p.stem: p for p in ROOT.glob("*.py")}
SCRIPTS = {"part1_inversion", "part1_spline_start", "part2_diffusion", "part3_text_to_image",
           "gan_baseline", "experiments", "bench", "make_assignment"}
MACHINERY = {"runs", "flags", "outputs", "ddp"}


def imports(name):
    """The top-level modules of this repository that `name`.py imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_the_machinery_imports_no_script():
    for name in MACHINERY:
        assert not imports(name) & SCRIPTS, f"{name}.py imports {sorted(imports(name) & SCRIPTS)}"


def test_schedule_and_unet_know_nothing_of_each_other():
    assert "unet" not in imports("schedule") and "schedule" not in imports("unet")


def test_no_import_cycle():
    graph = {name: imports(name) for name in MODULES}
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for other in graph[name]:
            visit(other)
        path.pop()
        done.add(name)
    for name in graph:
        visit(name)
