"""Issue 14: nothing lost, nothing half-done. Each test pins one failure that a hostile probe found
(the numbers are the issue's): a run lost or mixed with another, a traceback or a silent acceptance
where a one-line error (exit 2) belongs. Almost everything runs in this process on the tiny settings
of test_part2.py; only SIGTERM needs a process of its own."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import gan_baseline
import metrics
import outputs
import part2_diffusion
import plots
import unet
from conftest import write_idx
from outputs import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--T", "20", "--batch-size", "8", "--n", "4", "--ckpt-every", "2"]
FAST_DRAW = ["--sampler", "ddim", "--sampling-steps", "2"]



def run(argv, mnist_dir, runs):
    part2_diffusion.main(TINY + ["--data-dir", str(mnist_dir), "--runs", str(runs)] + argv)


def exits(main, capsys):
    """What `python script.py ...` does (run_main around main): (exit status, stderr lines)."""
    try:
        with pytest.raises(SystemExit) as e:
            outputs.run_main(main)
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("Ctrl-C escaped run_main: a traceback")
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """A tiny run, trained 2 steps (a checkpoint at step 2), that the tests below copy and abuse."""
    runs = tmp_path_factory.mktemp("runs")
    run(["--steps", "2", "--name", "tiny"], mnist_dir, runs)
    return runs / "tiny"


@pytest.fixture
def copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "runs" / "copy")
    return tmp_path / "runs" / "copy"


def nan_after(monkeypatch, calls):
    """Make the training loss NaN from call number `calls + 1` on, as a diverging run's would be."""
    real, seen = part2_diffusion.training_loss, []

    def loss(*args):
        seen.append(1)
        value = real(*args)
        return value * float("nan") if len(seen) > calls else value
    monkeypatch.setattr(part2_diffusion, "training_loss", loss)


# --- 1. the divergence guard keeps only weights that work -----------------------------------------

def test_a_diverging_run_keeps_no_checkpoint_that_gives_nan(mnist_dir, tmp_path):
    """--lr 1e3: finite weights at the step-2 checkpoint, yet NaN at the next step. Such weights
    must not replace the checkpoint; whatever checkpoint is kept must give finite output."""
    with pytest.raises(UserError, match="lower --lr") as e:
        run(["--lr", "1e3", "--steps", "30", "--name", "nan"], mnist_dir, tmp_path)
    path = tmp_path / "nan" / "checkpoint.pt"
    if not path.exists():
        assert "no checkpoint was saved" in str(e.value)
        return
    ckpt = torch.load(path, weights_only=True)
    model = part2_diffusion.build_model(ckpt["meta"]["model_config"], ckpt["ema"], path)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(4, 1, 28, 28), torch.tensor([0, 5, 10, 19]))).all()


def test_sampling_refuses_weights_that_give_non_finite_output(copy):
    ckpt = torch.load(copy / "checkpoint.pt", weights_only=True)
    first = next(iter(ckpt["ema"]))
    ckpt["ema"][first] = torch.full_like(ckpt["ema"][first], float("nan"))
    torch.save(ckpt, copy / "checkpoint.pt")
    with pytest.raises(UserError, match="not finite"):
        part2_diffusion.main(["--sample-from", str(copy), *FAST_DRAW, "--n", "4"])
    assert not list(copy.glob("samples/*/samples.npy"))


# --- 2. two runs with one --name ------------------------------------------------------------------

def test_two_runs_started_together_with_one_name_never_share_it(mnist_dir, tmp_path, monkeypatch):
    """Run B starts while run A, with the same --name, is still loading its data: A's folder is
    still empty then. B must stop with one line, and A must finish with its own files."""
    real_load, second = data.load, []

    def load(*args, **kwargs):
        if not second:  # A is loading: start B now
            try:
                run(["--steps", "1", "--name", "same", "--seed", "1"], mnist_dir, tmp_path)
                second.append("B succeeded too")
            except UserError as e:
                second.append(str(e))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(data, "load", load)
    run(["--steps", "1", "--name", "same", *FAST_DRAW], mnist_dir, tmp_path)
    assert "already exists" in second[0]
    assert json.loads((tmp_path / "same" / "config.json").read_text())["seed"] == 0  # A's, not B's


# --- 3. every flag that changes the samples names their folder ------------------------------------

@pytest.mark.parametrize("argv, name", [
    ([], "ddpm250-n64-seed0"),                   # the default sampler: DDPM on 250 steps
    (["--sampler", "ddim"], "ddim50-n64-seed0"),
    (["--sampler", "ddim", "--sampling-steps", "10", "--n", "8"], "ddim10-n8-seed0"),
    (["--sampler", "ddim", "--eta", "0.5"], "ddim50-eta0.5-n64-seed0"),
    (["--labels", "3", "7", "--guidance", "2"], "ddpm250-labels3-7-guidance2-n64-seed0"),
    (["--guidance", "1.5", "--seed", "3"], "ddpm250-guidance1.5-n64-seed3"),
    (["--sampling-steps", "1000", "--T", "1000"], "ddpm-n64-seed0"),  # all T steps: Algorithm 2
    (["--sampler", "dpm-solver"], "dpm-solver20-n64-seed0"),
])
def test_the_samples_folder_names_every_flag_that_changes_them(argv, name):
    assert part2_diffusion.sample_folder_name(part2_diffusion.get_args(argv)) == name


def test_a_second_draw_with_another_eta_keeps_the_first(copy):
    for eta in ["0", "0.5"]:
        part2_diffusion.main(["--sample-from", str(copy), *FAST_DRAW, "--n", "4", "--eta", eta])
    first, second = copy / "samples" / "ddim2-n4-seed0", copy / "samples" / "ddim2-eta0.5-n4-seed0"
    assert not np.array_equal(np.load(first / "samples.npy"), np.load(second / "samples.npy"))
    summary = json.loads((second / "summary.json").read_text())
    assert summary["eta"] == 0.5 and summary["labels"] is None and summary["guidance"] is None


# --- 4. --overwrite never mixes two runs ----------------------------------------------------------

def test_a_failed_overwrite_leaves_no_file_of_the_old_run(copy, mnist_dir, monkeypatch):
    (copy / "samples" / "ddim2-n4-seed0").mkdir(parents=True)  # a draw from the old checkpoint
    (copy / "notes.txt").write_text("mine")
    nan_after(monkeypatch, 0)
    with pytest.raises(UserError) as e:
        run(["--steps", "5", "--name", "copy", "--overwrite", "--seed", "7"], mnist_dir,
            copy.parent)
    assert "no checkpoint was saved" in str(e.value) and "kept" not in str(e.value)
    assert not (copy / "checkpoint.pt").exists() and not (copy / "samples").exists()
    assert json.loads((copy / "config.json").read_text())["seed"] == 7
    assert (copy / "notes.txt").read_text() == "mine"  # not a file of a run: left alone


def test_overwrite_does_not_empty_a_folder_that_holds_no_run(mnist_dir, tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("...")
    with pytest.raises(UserError, match="holds no run"):
        run(["--steps", "1", "--name", "thesis", "--overwrite"], mnist_dir, tmp_path)
    assert (tmp_path / "thesis" / "chapter1.tex").exists()


# --- 5. SIGTERM and Ctrl-C ------------------------------------------------------------------------

@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_saves_and_stops_like_ctrl_c(sig, mnist_dir, tmp_path):
    """What `docker stop` and SLURM (SIGTERM) and a closing terminal (SIGHUP) send: the checkpoint
    is saved, and the exit status is 128 + the signal (issue 25: it was 0, and SIGHUP killed the
    run with nothing saved). The tests with a process of their own."""
    if not hasattr(signal, sig):
        pytest.skip(f"no {sig} on this platform")
    log = tmp_path / "stderr.txt"
    argv = [*TINY, "--data-dir", str(mnist_dir), "--steps", "100000", "--ckpt-every", "100000",
            "--name", "t"]
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, str(ROOT / "part2_diffusion.py"), *argv],
                             cwd=tmp_path, stderr=err, stdout=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1"))
        deadline = time.time() + 90
        while "step 1/" not in log.read_text() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)  # until training has begun
        try:  # a second process on the folder is refused while the first holds it (issue 25)
            with pytest.raises(UserError, match=f"in use by another process \\(PID {p.pid}\\)"):
                run(["--steps", "3", "--name", "t", "--overwrite"], mnist_dir, tmp_path / "runs")
        finally:
            p.send_signal(getattr(signal, sig))
            p.wait(timeout=120)
    text = log.read_text()
    assert p.returncode == 128 + getattr(signal, sig), text
    assert "interrupted" in text and "--sample-from" in text and "Traceback" not in text
    assert torch.load(tmp_path / "runs" / "t" / "checkpoint.pt", weights_only=True)["step"] > 0
    assert not (tmp_path / "runs" / "t" / "samples.npy").exists()  # stopped: no minutes of sampling
    step = torch.load(tmp_path / "runs" / "t" / "checkpoint.pt", weights_only=True)["step"]
    run(["--steps", str(step + 1), "--resume", str(tmp_path / "runs" / "t"), *FAST_DRAW],
        mnist_dir, tmp_path / "runs")  # its lock went with it: no stale lock


def test_ctrl_c_in_training_saves_and_stops_without_sampling(mnist_dir, tmp_path, monkeypatch,
                                                              capsys):
    real, calls = part2_diffusion.training_loss, []

    def loss(*args):  # Ctrl-C arrives during the third step
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)
    monkeypatch.setattr(part2_diffusion, "training_loss", loss)
    run(["--steps", "100", "--name", "c"], mnist_dir, tmp_path)
    assert torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "c" / "samples.npy").exists()
    assert f"--sample-from {tmp_path / 'c'}" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["loading data", "sampling"])
def test_ctrl_c_elsewhere_is_one_line(where, copy, mnist_dir, tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    if where == "loading data":
        monkeypatch.setattr(data, "load", ctrl_c)
        argv = TINY + ["--data-dir", str(mnist_dir), "--runs", str(tmp_path / "runs"),
                       "--name", "new"]
    else:
        monkeypatch.setattr(part2_diffusion, "sample", ctrl_c)
        argv = ["--sample-from", str(copy), *FAST_DRAW]
    status, lines = exits(lambda: part2_diffusion.main(argv), capsys)
    assert status == 130 and lines[-1] == "interrupted"
    assert not (tmp_path / "runs" / "new").exists()  # no empty run folder left behind


# --- 6. what kill -9 leaves behind, and power cuts ------------------------------------------------

def test_resume_removes_the_temporary_files_of_a_killed_run(copy, mnist_dir):
    """kill -9 in the middle of a save leaves atomic_write's temporary file; the next run cleans
    it up."""
    orphans = [copy / ".checkpoint.k2j4_x.tmp.pt", copy / ".samples.8fh3.tmp.npy"]
    for path in orphans:
        path.write_bytes(b"half a checkpoint")
    run(["--steps", "3", "--resume", str(copy), *FAST_DRAW], mnist_dir, copy.parent)
    assert not any(path.exists() for path in orphans)


def test_atomic_write_forces_the_bytes_to_disk_before_the_rename(tmp_path, monkeypatch):
    done = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (done.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (done.append("rename"), real_replace(a, b)))
    outputs.atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("data"))
    assert done == ["fsync", "rename"] and (tmp_path / "x.txt").read_text() == "data"


# --- 7. float flags: NaN, infinity and ranges, refused before any training ------------------------

@pytest.mark.parametrize("argv", [
    ["--eta", "1.5"], ["--eta", "-0.1"], ["--eta", "nan"], ["--lr", "nan"], ["--lr", "inf"],
    ["--minutes", "nan"], ["--minutes", "inf"], ["--p-uncond", "1.5"], ["--p-uncond", "nan"],
    ["--ema", "nan"], ["--guidance", "inf", "--conditional"],
])
def test_bad_float_flags_are_refused_before_training(argv, mnist_dir, tmp_path):
    with pytest.raises(UserError, match=argv[0]):
        run(["--steps", "1", "--name", "f", *argv], mnist_dir, tmp_path)
    assert not list(tmp_path.iterdir())  # no run folder, not even an empty one


def test_the_gan_refuses_nan_minutes(mnist_dir, tmp_path):
    with pytest.raises(UserError, match="--minutes"):
        gan_baseline.main(["--minutes", "nan", "--steps", "1", "--n", "4", "--data-dir",
                           str(mnist_dir), "--runs", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


# --- 8. --resume keeps the run's settings, and says so --------------------------------------------

@pytest.mark.parametrize("argv", [["--conditional"], ["--preset", "gpu"], ["--T", "30"],
                                  ["--schedule", "cosine"], ["--lr", "0.01"]])
def test_resume_refuses_flags_that_contradict_the_run(argv, copy, mnist_dir):
    with pytest.raises(UserError, match=f"--resume keeps .*{argv[0]}"):
        run(["--steps", "3", "--resume", str(copy), *argv], mnist_dir, copy.parent)


# --- 9. a full disk, and bad input of every kind: one line, before any training -------------------

def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(copy, mnist_dir, monkeypatch):
    before = (copy / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    words = r"disk is full: cannot write .*checkpoint.pt.*needs about \d+ MB"
    with pytest.raises(UserError, match=words):
        run(["--steps", "4", "--resume", str(copy)], mnist_dir, copy.parent)
    assert (copy / "checkpoint.pt").read_bytes() == before
    assert not list(copy.glob(".*tmp*"))


def test_a_name_that_is_a_file_is_refused(mnist_dir, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(UserError, match="is a file"):
        run(["--steps", "1", "--name", "afile"], mnist_dir, tmp_path)


def test_a_dataset_with_no_images_is_refused(tmp_path):
    for split in ["train", "t10k"]:
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.zeros(0), 2049)
    with pytest.raises(UserError, match="0 images"):
        run(["--steps", "1", "--name", "empty"], tmp_path, tmp_path / "runs")
    assert not (tmp_path / "runs" / "empty").exists()


def drop(key):
    return lambda ckpt: ckpt.pop(key)


def set_meta(key, value):
    return lambda ckpt: ckpt["meta"].__setitem__(key, value)


@pytest.mark.parametrize("edit, verb, words", [
    (drop("meta"), "--sample-from", "missing meta"),
    (lambda c: c["meta"].pop("conditional"), "--sample-from", "missing meta\\['conditional'\\]"),
    (drop("optimizer"), "--resume", "sampling only"),  # refused before issue 14 too: kept as it was
    (drop("rng"), "--resume", "'rng'"),
    (set_meta("model_config", dict(part2_diffusion.PRESETS["cpu"], colour="blue")), "--sample-from",
     "does not build a U-Net"),
    (set_meta("schedule", dict(name="zigzag", T=20)), "--sample-from", "schedule"),
])
def test_a_hand_edited_checkpoint_is_one_line(edit, verb, words, copy, mnist_dir):
    ckpt = torch.load(copy / "checkpoint.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, copy / "checkpoint.pt")
    with pytest.raises(UserError, match=words):
        run([verb, str(copy), "--steps", "3", *FAST_DRAW], mnist_dir, copy.parent)


def test_a_classifier_file_holding_a_list_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "clf.pt")
    with pytest.raises(UserError, match="not a classifier"):
        metrics.load_or_train_classifier(tmp_path, tmp_path / "clf.pt")


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}/figure"], ".png"),
    (["--out", "{tmp}/figure.txt"], ".png"),
    (["--out", "{tmp}/ok.png", "--T", "100000000"], "--T"),
    (["--out", "{tmp}/ok.png", "--data-dir", "{tmp}"], "cannot be read"),
])
def test_plots_py_schedules_refuses_bad_input_in_one_line(argv, words, tmp_path):
    # a corrupt file: gzip's magic bytes, then no gzip at all
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip at all")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(1, np.uint8), 2049)  # and its labels
    with pytest.raises(UserError, match=words):
        plots.main(["schedules", "--T", "10"] + [a.format(tmp=tmp_path) for a in argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing written
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


# --- 10. messages ---------------------------------------------------------------------------------

def test_an_error_after_the_progress_line_starts_a_line_of_its_own(mnist_dir, tmp_path, monkeypatch,
                                                                    capsys):
    """The loss turns NaN at step 2, after the progress line was drawn and before any checkpoint:
    the error is on its own line, and claims no "last good checkpoint"."""
    nan_after(monkeypatch, 1)
    status, lines = exits(lambda: run(["--steps", "10", "--name", "p"], mnist_dir, tmp_path),
                          capsys)
    assert status == 2 and lines[-1].startswith("error: the loss became nan at step 2")
    assert "no checkpoint was saved" in lines[-1] and "kept" not in lines[-1]


def test_the_error_names_the_last_good_checkpoint_when_there_is_one(copy, mnist_dir, monkeypatch):
    nan_after(monkeypatch, 2)  # resumed at step 2: steps 3 and 4 train, then step 4 is saved
    with pytest.raises(UserError, match=f"from step 4, is kept in {copy}"):
        run(["--steps", "10", "--resume", str(copy)], mnist_dir, copy.parent)


@pytest.mark.parametrize("main, argv", [
    (part2_diffusion.main, ["--preset", "huge"]),
    (part2_diffusion.main, ["--sampler", "euler"]),
    (unet.main, ["--preset", "huge"]),
    (metrics.main, ["--no-such-flag"]),
    (metrics.main, []),  # neither SAMPLES nor --calibrate
    (plots.main, ["schedules", "--T", "ten"]),
    (gan_baseline.main, ["--steps", "many"]),
])
def test_every_script_says_a_bad_flag_in_one_line(main, argv, capsys):
    status, lines = exits(lambda: main(argv), capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines


def test_a_failure_before_any_work_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "mnist", ())  # offline, and MNIST named but absent
    with pytest.raises(UserError, match="not found"):
        part2_diffusion.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--runs",
                              str(tmp_path / "runs"), "--name", "x"])
    assert not (tmp_path / "runs").exists()  # neither the run folder nor --runs, which it made


# --- an unfinished sampler exercise after a finished training (issue 24) ---------------------------

def test_an_unfinished_sampler_ends_a_finished_training_in_one_line(mnist_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """The student edition's p_sample raises NotImplementedError("Exercise 6: ..."): the training
    is saved, and the run ends in one line (exit 2) naming the exercise and --sample-from."""
    import schedule

    def unfinished(*args, **kwargs):
        raise NotImplementedError("Exercise 6: Eq. 11, then sigma_t z")
    monkeypatch.setattr(schedule.Schedule, "ddim_sample_loop", unfinished)
    code, err = exits(lambda: run(["--steps", "2", "--name", "u", *FAST_DRAW], mnist_dir,
                                  tmp_path), capsys)
    assert code == 2 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    assert "Exercise 6" in err[-1] and f"--sample-from {tmp_path / 'u'}" in err[-1]
    assert torch.load(tmp_path / "u" / "checkpoint.pt", weights_only=True)["step"] == 2
