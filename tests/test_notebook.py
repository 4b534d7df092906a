"""The scripts called from a notebook cell, as README.md's "Jupyter and Colab" shows: `import
part2_diffusion; part2_diffusion.main([...])` with the argument list the command line would take."""
import importlib
import inspect
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every script with a command line; experiments.py reads sys.argv itself.
SCRIPTS = ["autoencoder", "captions", "gan_baseline", "metrics", "part1_inversion",
           "part2_diffusion", "part3_text_to_image", "plots", "unet"]


def test_the_list_holds_every_main_that_takes_an_argument_list():
    found = []
    for path in sorted(ROOT.glob("*.py")):
        if "def main(argv" in path.read_text():
            found.append(path.stem)
    assert sorted(set(found) - {"make_assignment", "grade_class"}) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_from_a_cell_exits_cleanly(name, capsys):
    main = importlib.import_module(name).main
    assert list(inspect.signature(main).parameters) == ["argv"]
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code in (0, None) and "usage" in capsys.readouterr().out.lower()


def test_a_cell_samples_from_the_reference_checkpoint(tmp_path):
    """part2_diffusion.main([...]) writes what the command line writes: samples.png, samples.npy."""
    import part2_diffusion
    (tmp_path / "ref").mkdir()
    shutil.copyfile(ROOT / "reference" / "checkpoint.pt", tmp_path / "ref" / "checkpoint.pt")
    part2_diffusion.main(["--sample-from", str(tmp_path / "ref"), "--sampler", "ddim",
                          "--sampling-steps", "2", "--n", "4", "--data-dir", str(tmp_path),
                          "--device", "auto"])
    written = {p.name for p in (tmp_path / "ref" / "samples").rglob("*")}
    assert {"samples.png", "samples.npy"} <= written, written


def test_a_cell_draws_a_figure(tmp_path, mnist_dir):
    import plots
    plots.main(["schedules", "--T", "10", "--data-dir", str(mnist_dir),
                "--out", str(tmp_path / "schedules.png")])
    assert (tmp_path / "schedules.png").stat().st_size > 0
