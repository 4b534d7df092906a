"""experiments.py end to end on tiny fake MNIST: the rows, the JSON, the figure, a stopped run, bad input."""
import json
import math

import pytest

import experiments
import part2_diffusion
import runs
import plots
from outputs import UserError
from schedule import Schedule

pytestmark = pytest.mark.e2e  # the script end to end: plain `python -m pytest` runs these, --grade does not


@pytest.fixture
def tiny(mnist_dir, tmp_path, monkeypatch):
    """The real "cpu" U-Net on batches of 8, T = 10 and DDIM-5 during training: seconds, yet every line of the
    experiment runs. Part 2's own figures are left out here (tests/test_part2.py checks them): they took most
    of the time."""
    monkeypatch.setattr(part2_diffusion, "BATCH_SIZE", 8)
    monkeypatch.setattr(experiments, "MEASURE_DDIM_STEPS", 5)
    for figure in ("sample_grid", "trajectory", "forward_noising", "loss_curve"):
        monkeypatch.setattr(plots, figure, lambda *args: None)
    return ["--T", "10", "--n", "4", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--device", "cpu"]


def test_one_row_per_schedule_and_measurement_then_the_json_and_figure(tiny, tmp_path, monkeypatch, capsys):
    built = []  # the schedule of every training and sampling run, as part2_diffusion.py builds it

    def spy(name, T):
        built.append(name)
        return Schedule(name, T)

    monkeypatch.setattr(runs, "Schedule", spy)
    experiments.schedules_experiment(tiny + ["--schedules", "linear", "cosine", "--steps", "2", "--measure-at", "1",
                                             "--sampling-steps", "10", "2"])
    result = json.loads((tmp_path / "schedules.json").read_text())
    assert result["complete"] and result["device"].startswith("cpu")
    got = [(r["schedule"], r["train_steps"], r["sampler"]) for r in result["rows"]]
    assert got == [(s, *m) for s in ("linear", "cosine")
                   for m in [(1, "DDIM-5"), (2, "DDIM-5"), (2, "DDPM-10"), (2, "DDIM-2")]]
    for r in result["rows"]:
        assert r["n"] == 4 and math.isfinite(r["fid"]) and r["fid"] >= 0 and 0 <= r["precision"] <= 1
        assert sum(r["class_histogram"]) == 4 and 1 <= r["classes_present"] <= 4
    assert built == ["linear"] * 4 + ["cosine"] * 4  # each row really comes from its own schedule
    assert (tmp_path / "schedules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "FID at N = 4" in table and table.count("DDPM-10") == 3  # two progress rows and the final table


def test_a_run_stopped_midway_keeps_what_it_measured(tiny, tmp_path, monkeypatch):
    real_run, calls = part2_diffusion.run, []

    def run_that_dies_at_the_third_call(args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a timeout or Ctrl-C during the first sampler of the sweep
        return real_run(args)

    monkeypatch.setattr(part2_diffusion, "run", run_that_dies_at_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        experiments.schedules_experiment(tiny + ["--schedules", "quadratic", "--steps", "2", "--measure-at", "1",
                                                 "--sampling-steps", "2"])
    result = json.loads((tmp_path / "schedules.json").read_text())
    assert not result["complete"]
    assert [(r["train_steps"], r["sampler"]) for r in result["rows"]] == [(1, "DDIM-5"), (2, "DDIM-5")]
    assert (tmp_path / "schedules.png").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--sampling-steps", "1000"], "1..T = 10"),
    (["--sampling-steps", "2", "--steps", "10", "--measure-at", "20"], "1..--steps = 10"),
    (["--n", "3"], "--n more than 3"),
])
def test_bad_flags_are_refused_before_any_training(tiny, tmp_path, argv, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        experiments.schedules_experiment(tiny + argv)
    assert not (tmp_path / "schedules.json").exists()
