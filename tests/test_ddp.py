"""torchrun: two CPU processes (gloo) train like one process with the whole batch (ddp.py).

Each test starts `python -m torch.distributed.run` (what the `torchrun` command runs) with two
processes: a few seconds apiece.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp
import flags
import runs
import part2_diffusion as p2

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
# As tests/test_part2.py's TINY: the real "cpu" model, T = 20, a global batch of 8 (4 a process).
# No --n: torchrun would take it for an abbreviation of one of its own flags, and stop.
TINY = ["--dataset", "mnist", "--T", "20", "--batch-size", "8", "--sampler", "ddim",
        "--sampling-steps", "2"]


def torchrun(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(ROOT / "part2_diffusion.py"), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1"))


def one_process_replay(argv, steps, monkeypatch):
    """The same training in this one process: at each step, rank 0's and rank 1's shares of the
    batch, drawn with their random numbers (ddp.seed_step), and one gradient step on the mean
    of the two losses, which is the loss of the whole batch. Returns (model, losses per step)."""
    args = p2.get_args(argv)
    flags.settle(args, p2.run_defaults(), None, "")
    images, labels, model, meta = p2.setup(args, None)
    sched = runs.build_schedule(meta, "")
    opt = torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=0.0)
    share = dict(meta, batch_size=meta["batch_size"] // 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    history = []
    for step in range(steps):
        losses = []
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            ddp.seed_step(meta["seed"], step)
            x0, y = p2.draw_batch(images, labels, share)
            losses.append(p2.training_loss(model, sched, x0, y))
        loss = (losses[0] + losses[1]) / 2
        p2.gradient_step(model, opt, loss, lr=p2.learning_rate(step, meta["lr"], 0.0))
        history.append(loss.item())
    return model, history


def test_two_processes_train_like_one_process_with_the_whole_batch(mnist_dir, tmp_path,
                                                                   monkeypatch):
    argv = TINY + ["--data-dir", str(mnist_dir), "--runs", str(tmp_path), "--steps", "3"]
    r = torchrun(*argv, "--name", "two", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "two"
    for name in ["checkpoint.pt", "samples.png", "loss.png", "summary.json"]:  # rank 0 wrote
        assert (run / name).is_file(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # and rank 1 wrote nothing
    two = torch.load(run / "checkpoint.pt", weights_only=True)
    assert two["step"] == 3
    model, history = one_process_replay(argv, 3, monkeypatch)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert two["history"] == pytest.approx(history, rel=1e-5)  # the whole batch's loss

    # --resume works with any number of processes: here one, for one more step
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    p2.main(["--data-dir", str(mnist_dir), "--resume", str(run), "--steps", "4", "--n", "4",
             "--sampler", "ddim", "--sampling-steps", "2"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4


def test_a_batch_that_does_not_split_is_refused_in_one_line(mnist_dir, tmp_path):
    r = torchrun(*TINY, "--batch-size", "7", "--data-dir", str(mnist_dir), "--runs",
                 str(tmp_path), cwd=tmp_path)
    assert r.returncode != 0
    assert "error: a batch of 7 does not split over 2 processes" in r.stderr
    assert not list(tmp_path.iterdir())  # before any run folder was made
