"""Part 3's script end to end, on tiny fake MNIST: outputs, a prompt, resume, bad input, and
experiments.py guidance; and classifier-free guidance with the real network and a prompt.

Exercise 12's graded tests are in tests/test_schedule.py, beside guided_eps, with stand-in models:
the real network here also runs exercises 8, 9 and 11."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import captions
import experiments
import part3_text_to_image as part3
from outputs import UserError
from schedule import classifier_free_guidance

ROOT = Path(__file__).resolve().parents[1]
# The real network on batches of 8 and DDIM-2: seconds, yet every line runs. The autoencoder is
# trained on the 48 fake digits (two batches) the first time, and cached beside them.
TINY = ["--batch-size", "8", "--sampling-steps", "2", "--n", "4", "--ckpt-every", "2",
        "--minutes", "1", "--device", "cpu"]


@pytest.fixture
def run(mnist_dir, tmp_path, monkeypatch):
    """part3_text_to_image.py with TINY flags; prompts.png with 3 prompts of 2 digits each."""
    monkeypatch.setattr(part3, "GRID_PROMPTS", ["seven", "thick two", "a one slanted left"])
    monkeypatch.setattr(part3, "GRID_COLUMNS", 2)

    def run(*argv):
        args = part3.get_args([*TINY, "--data-dir", str(mnist_dir), "--runs", str(tmp_path),
                               *argv])
        return part3.run(args)
    return run


@pytest.mark.e2e
def test_a_tiny_run_writes_every_output_then_draws_a_prompt(run, tmp_path):
    summary = run("--steps", "3", "--name", "tiny")
    out = tmp_path / "tiny"
    for name in ["checkpoint.pt", "prompts.png", "loss.png", "config.json", "summary.json"]:
        assert (out / name).is_file(), name
    assert summary["steps"] == 3 and json.loads((out / "summary.json").read_text()) == summary
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["history"]) == 3 and "autoencoder" in ckpt
    assert ckpt["meta"]["model_config"]["context_dim"] == part3.TEXT["dim"]
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"

    drawn = run("--sample-from", str(out), "--prompt", "a thick seven", "--guidance", "2")
    folder = out / "samples" / "a-thick-seven-guidance2-ddim2-n4-seed0"
    samples = np.load(folder / "samples.npy")
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= -1 and samples.max() <= 1
    assert (folder / "samples.png").is_file() and drawn["prompt"] == "a thick seven"
    run("--sample-from", str(out), "--prompt", "", "--guidance", "2")  # no prompt at all
    again = np.load(out / "samples" / "empty-prompt-guidance2-ddim2-n4-seed0" / "samples.npy")
    assert not np.allclose(again, samples)  # the same noise, another prompt
    run("--sample-from", str(out))  # prompts.png again
    assert (out / "samples" / f"prompts-guidance{part3.GUIDANCE:g}-ddim2-seed0" / "prompts.png").is_file()


@pytest.mark.e2e
def test_resume_continues_the_step_count_as_one_long_run(run, tmp_path):
    run("--steps", "4", "--name", "long")
    run("--steps", "2", "--name", "split")
    run("--steps", "4", "--resume", str(tmp_path / "split"))
    long, split = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
                   for name in ("long", "split"))
    assert split["step"] == long["step"] == 4 and split["history"] == long["history"]
    for name, value in long["ema"].items():
        assert torch.equal(value, split["ema"][name]), f"ema.{name} differs after resume"
    with pytest.raises(UserError, match="--lr 0.5 .the run has"):
        run("--steps", "6", "--resume", str(tmp_path / "split"), "--lr", "0.5")


def test_an_unknown_word_stops_before_any_training(run, tmp_path):
    with pytest.raises(UserError, match=r"unknown word 'big'.*the vocabulary is: a thin thick"):
        run("--prompt", "a big seven", "--name", "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv, words", [
    (["--sampling-steps", "0"], "--sampling-steps must be at least 1"),
    (["--p-uncond", "1.5"], "--p-uncond must be in"),
    (["--guidance", "nan"], "finite"),
    (["--resume", "a", "--sample-from", "b"], "exclusive"),
])
def test_bad_flags_are_one_line_before_any_work(run, argv, words):
    with pytest.raises(UserError, match=words):
        run(*argv)


def test_a_part2_checkpoint_is_refused_in_one_line(run, tmp_path):
    shutil.copy(ROOT / "reference" / "checkpoint.pt", tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="not a part3_text_to_image.py checkpoint.*autoencoder"):
        run("--sample-from", str(tmp_path))


def test_guidance_with_a_prompt_is_one_batched_call_and_at_scale_1_the_prompted_model():
    torch.manual_seed(0)
    model = part3.new_network().eval()
    torch.nn.init.normal_(model.unet.out[-1].weight, std=0.1)  # it starts at zero
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    z, t = torch.randn(3, *part3.LATENT), torch.tensor([999, 500, 3])
    ids = captions.tokenize(["a thick seven", "two", "1 upright"])
    empty = captions.tokenize([part3.EMPTY] * 3)
    with torch.no_grad():
        prompted, unprompted = model(z, t, ids), model(z, t, empty)
        calls.clear()
        at = {scale: classifier_free_guidance(model, ids, scale, null_label=empty)(z, t)
              for scale in (1.0, 0.0)}
    assert calls == [6, 6], "each guided step must be one call of the network on 2B latents"
    assert torch.allclose(at[1.0], prompted, rtol=1e-4, atol=1e-5), "guidance 1: the prompted model"
    assert torch.allclose(at[0.0], unprompted, rtol=1e-4, atol=1e-5), "guidance 0: the empty prompt"
    assert not torch.allclose(prompted, unprompted)


@pytest.mark.e2e
def test_the_guidance_experiment_measures_each_scale(run, mnist_dir, tmp_path, capsys):
    run("--steps", "2", "--name", "g")
    flags = ["--run", str(tmp_path / "g"), "--data-dir", str(mnist_dir), "--out",
             str(tmp_path / "exp"), "--device", "cpu", "--sampling-steps", "2"]
    with pytest.raises(UserError, match="--n must be at least 40"):
        experiments.guidance_experiment(flags + ["--n", "20"])
    experiments.guidance_experiment(flags + ["--n", "40", "--scales", "0", "1"])
    result = json.loads((tmp_path / "exp" / "guidance.json").read_text())
    assert result["complete"] and [r["scale"] for r in result["rows"]] == [0, 1]
    for r in result["rows"]:
        assert r["n"] == 40 and np.isfinite(r["fid"])
        for key in ("prompt_accuracy", "thickness_pairs", "slant_pairs"):
            assert 0 <= r[key] <= 1, (key, r[key])
    for name in ("guidance_samples.png", "guidance.png"):
        assert (tmp_path / "exp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prompt acc." in capsys.readouterr().out
