"""gan_baseline.py end to end on tiny data: outputs, shapes, determinism, bad input."""
import json

import numpy as np
import pytest
import torch

import gan_baseline

TINY = ["--steps", "3", "--batch-size", "8", "--n", "6"]


def run(argv, mnist_dir, runs):
    flags = ["--data-dir", str(mnist_dir), "--runs", str(runs), "--device", "cpu"]
    gan_baseline.main(TINY + flags + argv)


def test_the_networks_map_noise_to_digits_and_digits_to_one_logit():
    torch.manual_seed(0)
    G, D = gan_baseline.generator(z_dim=8, width=4), gan_baseline.discriminator(width=4)
    with torch.no_grad():
        # huge values before the last layer: tanh must still bound the pixels
        G[-2].weight.mul_(1000)
    x = G(torch.randn(5, 8))
    assert x.shape == (5, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1 and x.abs().max() > 0.99
    assert D(x).shape == (5,)


@pytest.mark.e2e
def test_a_tiny_run_writes_every_output(mnist_dir, tmp_path):
    run(["--name", "tiny"], mnist_dir, tmp_path)
    out = tmp_path / "tiny"
    for name in ["checkpoint.pt", "samples.png", "samples.npy", "loss.png", "config.json",
                 "summary.json"]:
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"
    samples = np.load(out / "samples.npy")
    assert samples.shape == (6, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["n"] == 6 and summary["sampling_steps"] == 1
    # no classifier in mnist_dir
    assert summary["dataset"] == "mnist" and summary["metrics"] is None
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["history"]["d"]) == len(ckpt["history"]["g"]) == 3
    G = gan_baseline.generator()
    # the checkpoint rebuilds the generator that drew the samples
    G.load_state_dict(ckpt["generator"])
    again, _ = gan_baseline.sample(G.eval(), 6, 0, torch.device("cpu"))
    assert np.array_equal(again.numpy(), samples)


@pytest.mark.e2e
def test_same_seed_same_samples_and_no_run_is_overwritten_unless_asked(mnist_dir, tmp_path,
                                                                      monkeypatch):
    # the test above checks the figures; here they would only cost time
    monkeypatch.setattr(gan_baseline, "loss_figure", lambda *_: None)
    monkeypatch.setattr(gan_baseline.plots, "sample_grid", lambda *_: None)
    run(["--seed", "1"], mnist_dir, tmp_path)
    run(["--seed", "1"], mnist_dir, tmp_path)  # no --name: a fresh folder, gan-2
    first = np.load(tmp_path / "gan" / "samples.npy")
    second = np.load(tmp_path / "gan-2" / "samples.npy")
    assert np.array_equal(first, second)
    with pytest.raises(gan_baseline.UserError, match="--overwrite"):
        run(["--name", "gan", "--seed", "2"], mnist_dir, tmp_path)
    assert np.array_equal(np.load(tmp_path / "gan" / "samples.npy"), first)
    run(["--name", "gan", "--seed", "2", "--overwrite"], mnist_dir, tmp_path)
    assert not np.allclose(np.load(tmp_path / "gan" / "samples.npy"), first)


@pytest.mark.parametrize("argv, words", [
    (["--n", "0"], "--n must be at least 1"),
    (["--minutes", "0"], "--minutes must be positive"),
    (["--runs", "blocked"], "cannot write"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, mnist_dir, tmp_path, monkeypatch, capsys):
    """What `python gan_baseline.py ...` does (run_main around main), in this process: no torch
    re-import."""
    (tmp_path / "blocked").write_text("a file where the runs folder should be")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        gan_baseline.run_main(
            lambda: gan_baseline.main(TINY + ["--data-dir", str(mnist_dir)] + argv))
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "runs").exists()  # stopped before making a run folder
