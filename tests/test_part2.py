"""Part 2's script end to end, on tiny data: outputs, resume, determinism, Ctrl-C, bad input.

Exercise 10, the training loss, has its own tests: tests/test_training_loss.py.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import outputs
import part2_diffusion

pytestmark = pytest.mark.e2e  # the script end to end: plain `python -m pytest` runs these, --grade does not
ROOT = Path(__file__).resolve().parents[1]
# A few steps of the real "cpu" model on 48 tiny images with T = 20: seconds, yet every line runs.
TINY = ["--dataset", "mnist", "--T", "20", "--batch-size", "8", "--n", "4", "--ckpt-every", "2"]


def run(argv, mnist_dir, runs):
    part2_diffusion.main(TINY + ["--data-dir", str(mnist_dir), "--runs", str(runs)] + argv)


def weights(run_dir):
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)
    return ckpt


def test_a_tiny_run_writes_every_output(mnist_dir, tmp_path, capsys):
    run(["--steps", "3", "--name", "tiny"], mnist_dir, tmp_path)
    assert "sampling 4 images, ddpm: step 20/20" in capsys.readouterr().err  # the sampler's progress line
    out = tmp_path / "tiny"
    for name in ["checkpoint.pt", "samples.png", "samples.npy", "trajectory.png", "forward.png", "loss.png",
                 "config.json", "summary.json"]:
        assert (out / name).is_file(), name
    samples = np.load(out / "samples.npy")
    assert samples.shape == (4, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1  # the predicted x_0 is clipped at every step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["n"] == 4 and summary["dataset"] == "mnist"
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"


def test_resume_gives_the_same_weights_as_one_long_run(mnist_dir, tmp_path):
    run(["--steps", "4", "--name", "long"], mnist_dir, tmp_path)
    run(["--steps", "2", "--name", "split"], mnist_dir, tmp_path)
    run(["--steps", "4", "--resume", str(tmp_path / "split")], mnist_dir, tmp_path)
    long, split = weights(tmp_path / "long"), weights(tmp_path / "split")
    assert split["step"] == long["step"] == 4
    for key in ["model", "ema"]:
        for name, value in long[key].items():
            assert torch.equal(value, split[key][name]), f"{key}.{name} differs after resume"
    assert long["history"] == split["history"]


def test_sampling_is_deterministic_per_seed(mnist_dir, tmp_path):
    run(["--steps", "2", "--name", "s"], mnist_dir, tmp_path)
    draws = {}
    for seed in ["1", "1", "2"]:
        run(["--sample-from", str(tmp_path / "s"), "--sampler", "ddim", "--sampling-steps", "5",
             "--seed", seed], mnist_dir, tmp_path)
        draws.setdefault(seed, []).append(np.load(tmp_path / "s" / "samples" / f"ddim5-n4-seed{seed}" / "samples.npy"))
    assert np.array_equal(draws["1"][0], draws["1"][1])
    assert not np.allclose(draws["1"][0], draws["2"][0])


def test_a_conditional_model_draws_the_labels_it_is_asked_for(mnist_dir, tmp_path):
    run(["--steps", "2", "--name", "c", "--conditional"], mnist_dir, tmp_path)
    run(["--sample-from", str(tmp_path / "c"), "--labels", "3", "7", "--guidance", "2", "--sampler", "ddim",
         "--sampling-steps", "4"], mnist_dir, tmp_path)
    # --labels and --guidance change the samples, so they name the folder (issue 14)
    folder = tmp_path / "c" / "samples" / "ddim4-labels3-7-guidance2-n4-seed0"
    assert (folder / "samples.png").is_file()


def test_the_reference_checkpoint_samples_digits_and_cannot_be_resumed(mnist_dir, tmp_path):
    """reference/checkpoint.pt (made by the instructors' benchmarks) is small, loads, and DDIM-10 on it gives finite images
    in [-1, 1]; it holds no optimiser state, so --resume refuses it in one line."""
    path = ROOT / "reference" / "checkpoint.pt"
    assert path.stat().st_size <= 3e6, f"{path} is {path.stat().st_size / 1e6:.1f} MB; keep it to 3 MB"
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "checkpoint.pt").write_bytes(path.read_bytes())  # sampling writes beside it
    part2_diffusion.main(["--sample-from", str(tmp_path / "ref"), "--sampler", "ddim", "--sampling-steps",
                          "10", "--n", "8", "--data-dir", str(tmp_path)])
    samples = np.load(tmp_path / "ref" / "samples" / "ddim10-n8-seed0" / "samples.npy")
    assert samples.shape == (8, 1, 28, 28) and np.isfinite(samples).all()
    assert samples.min() >= -1 and samples.max() <= 1 and samples.std() > 0.3  # digits, not a flat image
    r = cli("--resume", str(tmp_path / "ref"), "--data-dir", str(mnist_dir), cwd=tmp_path)
    assert r.returncode == 2 and "--sample-from" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        part2_diffusion.get_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in text.split("\n  -")[1:]:
        assert option.count("default") <= 1, option


def cli(*argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / "part2_diffusion.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, MPLBACKEND="Agg"))


@pytest.mark.parametrize("argv, words", [
    (["--n", "0"], "--n must be at least 1"),
    (["--sampler", "ddim", "--sampling-steps", "30"], "exceeds T"),
    (["--guidance", "3", "--steps", "1"], "--conditional"),
    (["--resume", "nowhere"], "no checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, mnist_dir, tmp_path):
    r = cli(*TINY, "--data-dir", str(mnist_dir), *argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_named_dataset_that_is_missing_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "mnist", ())  # offline: no mirror to try
    with pytest.raises(SystemExit) as e:
        part2_diffusion.run_main(lambda: part2_diffusion.main(["--dataset", "mnist", "--data-dir", str(tmp_path),
                                                                   "--runs", str(tmp_path / "runs")]))
    assert e.value.code == 2


def test_a_corrupt_checkpoint_and_an_existing_run_are_refused(mnist_dir, tmp_path):
    (tmp_path / "runs" / "bad").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = cli("--sample-from", "runs/bad", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read checkpoint" in r.stderr
    r = cli(*TINY, "--data-dir", str(mnist_dir), "--name", "bad", cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_an_unwritable_run_folder_is_refused_before_training(mnist_dir, tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    r = cli(*TINY, "--data-dir", str(mnist_dir), cwd=tmp_path)
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(mnist_dir, tmp_path):
    p = subprocess.Popen([sys.executable, str(ROOT / "part2_diffusion.py"), *TINY, "--data-dir", str(mnist_dir),
                          "--steps", "100000", "--ckpt-every", "100000", "--name", "c"],
                         cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=dict(os.environ, MPLBACKEND="Agg"))
    deadline = time.time() + 60
    while not (tmp_path / "runs" / "c" / "forward.png").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a few training steps
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err  # 128 + SIGINT: `... && next` stops there (issue 25)
    assert "interrupted" in err
    ckpt = weights(tmp_path / "runs" / "c")
    assert 0 < ckpt["step"] < 100000


def test_threads_follow_the_idle_cores_and_never_exceed_torch_default(monkeypatch):
    """pick_threads: one thread per idle core, at least one, never more than torch had;
    OMP_NUM_THREADS, when set, is left to decide."""
    import outputs
    idle = outputs.idle_cores(0.05)
    assert idle is None or 0 <= idle <= (os.cpu_count() or 1) + 1e-9
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(outputs, "_ceiling", None)  # put back afterwards: no tuner in later tests
    try:
        for cores_idle, expected in [(0.0, 1), (0.6, 1), (1.6, 2), (7.0, 2)]:
            torch.set_num_threads(2)
            monkeypatch.setattr(outputs, "idle_cores", lambda *_, v=cores_idle: v)
            assert outputs.pick_threads() == expected == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        monkeypatch.setattr(outputs, "idle_cores", lambda *_: 0.0)
        torch.set_num_threads(2)
        assert outputs.pick_threads() == 2  # no core is idle, but the variable decides
    finally:
        torch.set_num_threads(1)  # the suite's one thread (conftest.py)


def test_learning_rate_warms_up_then_decays_to_zero_at_the_end_of_the_budget(monkeypatch):
    lr = part2_diffusion.learning_rate
    W = part2_diffusion.WARMUP
    assert lr(0, 1.0, 0.0) == 1 / W and lr(W - 1, 1.0, 0.0) == 1.0  # linear warm-up
    monkeypatch.setattr(part2_diffusion, "LR_DECAY", False)
    assert lr(W, 2.0, 0.9) == 2.0  # constant after the warm-up
    monkeypatch.setattr(part2_diffusion, "LR_DECAY", True)
    rates = [lr(W, 2.0, u) for u in np.linspace(0, 1, 11)]
    assert rates[0] == 2.0 and abs(rates[5] - 1.0) < 1e-12 and abs(rates[-1]) < 1e-12
    assert all(a > b for a, b in zip(rates, rates[1:]))  # it only ever goes down
    assert lr(W, 2.0, 1.5) == rates[-1]  # a budget overrun keeps it at 0


def test_a_new_loop_starts_at_one_thread_per_idle_core(monkeypatch):
    """The load that moved a training to one thread may have ended when its sampling starts: each
    loop's ThreadTuner begins as pick_threads does, one thread per idle core, at most torch's own
    count (here 2)."""
    before = torch.get_num_threads()
    monkeypatch.setattr(outputs, "_ceiling", 2)
    try:
        for idle, expected in [(0.1, 1), (1.8, 2), (7.0, 2)]:
            monkeypatch.setattr(outputs, "idle_cores", lambda: idle)
            torch.set_num_threads(3 - expected)
            outputs.ThreadTuner()
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_follows_the_load_while_a_loop_runs(monkeypatch):
    """outputs.ThreadTuner, on a simulated 2-core machine: quiet, two threads run 5.8 steps/s and
    one 3.1; from t = 60 s a busy core makes two threads crawl at 0.6 (the collapse measured on a
    2-core laptop), and at t = 150 s the machine is quiet again. The tuner must leave two threads
    when they collapse and come back to them afterwards, within a few windows each time."""
    clock = [0.0]
    monkeypatch.setattr(outputs.time, "time", lambda: clock[0])
    monkeypatch.setattr(outputs, "_ceiling", 2)
    monkeypatch.setattr(outputs, "idle_cores", lambda: None)  # the loop starts where it is

    class Torch:  # the two calls the tuner makes
        n = 2

        def get_num_threads(self):
            return self.n

        def set_num_threads(self, n):
            self.n = n
    tuner = outputs.ThreadTuner()
    tuner.torch = torch_ = Torch()
    busy = lambda t: 60 <= t < 150
    used = []
    while clock[0] < 240:
        rate = {1: 3.1, 2: 0.6 if busy(clock[0]) else 5.8}[torch_.n]
        clock[0] += 1 / rate
        tuner.tick()
        used.append((clock[0], torch_.n))
    share = lambda lo, hi, n: (sum(1 for t, k in used if lo <= t < hi and k == n)
                               / max(1, sum(1 for t, _ in used if lo <= t < hi)))
    assert share(10, 60, 2) > 0.9     # quiet: two threads, trying one now and then
    assert share(75, 150, 1) > 0.9    # busy core: one thread
    assert share(165, 240, 2) > 0.9   # quiet again: back to two

