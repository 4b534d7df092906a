"""Issue 25: no signal loses a run, no folder is shared, no path leaves its folder, every flag and
checkpoint entry has a range. One test per class of the issue (its number in each section's title);
each docstring lists the cases it covers. All in this process, on the tiny settings of
test_reliability.py; the processes of their own are there (SIGTERM, SIGHUP, a second process)."""
import errno
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import autoencoder
import captions
import experiments
import flags
import gan_baseline
import metrics
import outputs
import part1_inversion
import part2_diffusion
import part3_text_to_image as part3
import plots
import runs
from outputs import UserError

TINY = ["--dataset", "mnist", "--T", "20", "--batch-size", "8", "--n", "4", "--ckpt-every", "2",
        "--device", "cpu"]
FAST_DRAW = ["--sampler", "ddim", "--sampling-steps", "2"]
SIGNALS = [s.name for s in outputs.STOP_SIGNALS]


def exits(main, capsys):
    """What `python script.py ...` does (run_main around main): (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as e:
        outputs.run_main(main)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def script(name, mnist_dir, runs_dir, *argv):
    """main() of a training script on tiny settings, into runs_dir/s."""
    common = ["--data-dir", str(mnist_dir), "--runs", str(runs_dir), "--name", "s", *argv]
    if name == "part2":
        return lambda: part2_diffusion.main([*TINY, *common])
    if name == "gan":
        return lambda: gan_baseline.main(["--batch-size", "8", "--n", "4", "--device", "cpu",
                                          *common])
    return lambda: part3.main(["--batch-size", "8", "--sampling-steps", "2", "--n", "4",
                               "--ckpt-every", "2", "--device", "cpu", *common])


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """A tiny Part 2 run, trained 2 steps, that the tests below copy and abuse."""
    folder = tmp_path_factory.mktemp("runs")
    part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs", str(folder), "--steps",
                          "2", "--name", "tiny"])
    return folder / "tiny"


@pytest.fixture
def copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "runs" / "copy", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "runs" / "copy"


# --- 2, 3, 12. every signal that ends a process is a stop request ---------------------------------

@pytest.mark.parametrize("which, sig, phase", [
    *[(which, sig, "training") for which in ("part2", "gan", "part3") for sig in SIGNALS],
    *[(which, SIGNALS[-1], "final save") for which in ("part2", "gan", "part3")]])
def test_a_stop_signal_saves_the_run_and_exits_128_plus_its_number(which, sig, phase, mnist_dir,
                                                                   tmp_path, monkeypatch, capsys):
    """Part 2, Part 3 and the DCGAN, each with SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closing
    terminal) during training, and with SIGHUP during the final save: the checkpoint is whole under
    its own name, nothing is sampled, and the exit status is 128 + the signal (130, 143, 129).
    Before: exit 0; SIGHUP killed the process with nothing saved; the GAN offered a --resume it
    does not have; a signal during the last save cut it, leaving only a hidden temporary file."""
    signum = getattr(signal, sig)
    if phase == "training":  # the signal arrives after the second step
        real = runs.Run.step_done

        def step_done(self, loss):
            real(self, loss)
            if self.step == 2:
                os.kill(os.getpid(), signum)
        monkeypatch.setattr(runs.Run, "step_done", step_done)
        steps = "1000"
    else:  # the signal arrives as the last checkpoint is being written
        real_save = runs.save_checkpoint

        def save_checkpoint(path, state):
            os.kill(os.getpid(), signum)
            real_save(path, state)
        monkeypatch.setattr(runs, "save_checkpoint", save_checkpoint)
        steps = "2"
    status, lines = exits(script(which, mnist_dir, tmp_path, "--steps", steps), capsys)
    assert status == 128 + signum, lines
    assert lines[-1].startswith("interrupted: checkpoint saved at step 2"), lines
    assert ("--resume" in lines[-1]) == (which != "gan")  # the DCGAN has no --resume to offer
    ckpt = runs.load_safely(tmp_path / "s" / "checkpoint.pt")
    assert ckpt["step"] == 2
    history = ckpt["history"]
    assert all(len(h) == 2 for h in history.values()) if which == "gan" else len(history) == 2
    assert not list((tmp_path / "s").glob(".*tmp*")) and not (tmp_path / "s" / "summary.json")\
        .exists()


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_stop_signal_before_training_is_one_line_and_128_plus_its_number(sig, mnist_dir, tmp_path,
                                                                          monkeypatch, capsys):
    """SIGINT, SIGTERM and SIGHUP while the data loads: 'interrupted', 128 + the signal, no empty
    run folder (before: SIGHUP killed it silently, SIGTERM gave 130)."""
    import data
    real = data.load

    def load(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, sig))
        return real(*args, **kwargs)
    monkeypatch.setattr(data, "load", load)
    status, lines = exits(script("part2", mnist_dir, tmp_path, "--steps", "5"), capsys)
    assert status == 128 + getattr(signal, sig) and lines[-1] == "interrupted"
    assert not (tmp_path / "s").exists()


# --- 5. experiments.py after an interrupt ---------------------------------------------------------

def test_an_interrupted_experiment_names_no_folder_it_deletes_and_leaves_none(
        mnist_dir, tmp_path, monkeypatch, capsys):
    """experiments.py schedules, SIGHUP during its first training: exit 129, what it measured kept,
    no "--resume <temporary folder>" (that folder is deleted on the way out), and no temporary
    folder left behind. Before: SIGHUP killed it, leaving the folder; Ctrl-C named it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(part2_diffusion, "BATCH_SIZE", 8)
    monkeypatch.setattr(experiments, "MEASURE_DDIM_STEPS", 5)
    real = runs.Run.step_done

    def step_done(self, loss):
        real(self, loss)
        os.kill(os.getpid(), signal.SIGHUP if hasattr(signal, "SIGHUP") else signal.SIGTERM)
    monkeypatch.setattr(runs.Run, "step_done", step_done)
    status, lines = exits(lambda: experiments.schedules_experiment(
        ["--T", "10", "--n", "4", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "out"),
         "--device", "cpu", "--schedules", "linear", "--steps", "2", "--measure-at", "1",
         "--sampling-steps", "2"]), capsys)
    assert status in (129, 143) and "interrupted" in lines[-1], lines
    assert not any("--resume" in line for line in lines), lines
    assert not list((tmp_path / "tmp").glob("schedules-*"))


# --- 4. one process per run folder ----------------------------------------------------------------

def hold_lock(folder, pid="4242"):
    """Take folder's lock as another process would: an open file, flock'ed, holding a PID."""
    fcntl = pytest.importorskip("fcntl")  # no OS lock elsewhere: folders go unlocked there
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, pid.encode())
    return fd


@pytest.mark.parametrize("argv", [["--resume", "{run}"], ["--name", "copy", "--overwrite"],
                                  ["--sample-from", "{run}", *FAST_DRAW]])
def test_a_run_folder_in_use_is_refused_naming_the_holder(argv, copy, mnist_dir):
    """--resume, --overwrite and --sample-from while another process holds the folder (a training
    of it): refused in one line naming its PID, with nothing of the folder touched, the other
    process's half-written checkpoint included. Before: both went on, and one run's work was lost
    or the folder mixed two runs. (test_reliability.py: the same with a real second process.)"""
    orphan = copy / ".checkpoint.abcd1234.tmp.pt"  # the holder's checkpoint, being written
    orphan.write_bytes(b"half")
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.name != ".lock"}
    fd = hold_lock(copy)
    try:
        with pytest.raises(UserError, match="in use by another process \\(PID 4242\\)"):
            part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs", str(copy.parent),
                                  "--steps", "3", *[a.format(run=copy) for a in argv]])
    finally:
        os.close(fd)
    after = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before and not (copy / "samples").exists()


def test_cleanup_removes_only_the_labs_own_temporary_files(copy, mnist_dir):
    """--resume removes what a killed save left (.checkpoint.<random>.tmp.pt), never a hidden file
    of yours that looks like one (.notes.<random>.tmp.txt, .bashrc.tmp). Before: all three went."""
    ours, yours = copy / ".checkpoint.k2j4_x0a.tmp.pt", [copy / ".notes.x1y2z3ab.tmp.txt",
                                                        copy / ".bashrc.tmp"]
    for path in [ours, *yours]:
        path.write_bytes(b"x")
    part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs", str(copy.parent),
                          "--steps", "3", "--resume", str(copy), *FAST_DRAW])
    assert not ours.exists() and all(path.exists() for path in yours)


# --- 8. empty values ------------------------------------------------------------------------------

@pytest.mark.parametrize("main, argv", [
    (part2_diffusion.main, ["--sample-from", ""]), (part2_diffusion.main, ["--resume", ""]),
    (part2_diffusion.main, ["--name", "", "--overwrite"]), (part2_diffusion.main, ["--runs", ""]),
    (part2_diffusion.main, ["--data-dir", " "]), (gan_baseline.main, ["--name", ""]),
    (part3.main, ["--resume", ""]), (part1_inversion.main, ["--out", ""]),
    (plots.main, ["schedules", "--out", ""]), (metrics.main, ["x.npy", "--json", ""]),
    (autoencoder.main, ["--out", ""]), (captions.main, ["--out", ""]),
    (lambda argv: experiments.gan_experiment(argv), ["--out", ""]),
])
def test_an_empty_value_is_refused_before_any_work(main, argv, tmp_path, monkeypatch):
    """An unset shell variable (--resume "$RUN") gives an empty value: refused in one line naming
    the flag, with nothing written, for every path flag of every script. Before: --sample-from ""
    and --resume "" started a new training, --name "" --overwrite replaced runs/ddpm, and
    part1_inversion.py --out "" wrote into the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"{argv[-2] if argv[-1].strip() == '' else argv[0]} is "
                                        "empty"):
        main(argv)
    assert not list(tmp_path.iterdir())


# --- 9. paths stay inside -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "/abs", "..", ".", " "])
def test_a_name_is_one_folder_under_runs(name, mnist_dir, tmp_path):
    """--name that leaves --runs (../x, /abs), is several folders (a/b) or none (.., ., blank):
    refused before anything is created. Before: the run went outside --runs."""
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="--name"):
        part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs",
                              str(tmp_path / "runs"), "--steps", "1", "--name", name])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"]


def test_no_run_or_draw_is_written_through_a_symbolic_link(copy, mnist_dir, tmp_path):
    """--overwrite of a run name that is a symbolic link to another run; --sample-from of a run
    whose samples/ is a symbolic link out of it; outputs onto a device (a pipe) or a folder.
    Each is refused, and the target is untouched. Before: the linked run was emptied and replaced,
    the draw landed outside the run, and a device path was replaced by a file when run as root."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(copy, elsewhere)
    (copy.parent / "link").symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(UserError, match="symbolic link"):
        part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs", str(copy.parent),
                              "--steps", "1", "--name", "link", "--overwrite"])
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    outside = tmp_path / "outside"
    outside.mkdir()
    (copy / "samples").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        part2_diffusion.main(["--sample-from", str(copy), *FAST_DRAW, "--n", "4"])
    assert not list(outside.iterdir())
    device = tmp_path / "pipe"  # a named pipe stands in for /dev/stdout: never a real device here
    os.mkfifo(device)
    for target in [str(device), str(tmp_path)]:
        with pytest.raises(UserError, match="not a regular file"):
            outputs.atomic_write(target, lambda tmp: Path(tmp).write_text("x"))
        with pytest.raises(UserError, match="not a regular file"):
            metrics.main([str(tmp_path / "x.npy"), "--json", target])
    assert device.is_fifo()


# --- 7. budgets that fire -------------------------------------------------------------------------

@pytest.mark.parametrize("main, minutes", [
    (m, v) for m in ("part2", "gan", "part3", "experiments gan")
    for v in ("nan", "inf", "1e18", "0", "-1")])
def test_every_minutes_flag_is_finite_positive_and_bounded(main, minutes, mnist_dir, tmp_path):
    """--minutes nan, inf, 1e18, 0 and -1 for Part 2, Part 3, the DCGAN and experiments.py gan:
    refused before any work, nothing written. Before: experiments.py gan --minutes nan (inf, 1e18)
    trained on towards 20,000 steps and wrote NaN into config.json."""
    with pytest.raises(UserError, match="--minutes"):
        if main == "experiments gan":
            experiments.gan_experiment(["--minutes", minutes, "--out", str(tmp_path / "out"),
                                        "--data-dir", str(mnist_dir)])
        else:
            script(main, mnist_dir, tmp_path / "runs", "--minutes", minutes)()
    assert not list(tmp_path.iterdir())


# --- 10. every flag has a range; checkpoints are checked by type and shape ------------------------

@pytest.mark.parametrize("main, argv, words", [
    ("part2", ["--seed", str(2 ** 64)], "--seed"), ("part2", ["--seed", "-1"], "--seed"),
    ("gan", ["--seed", str(2 ** 63)], "--seed"), ("part3", ["--seed", str(2 ** 64)], "--seed"),
    ("part2", ["--batch-size", str(10 ** 18)], "--batch-size 10{18} needs about .* GB"),
    ("part2", ["--n", str(10 ** 18)], "--n 10{18} needs about .* GB"),
    ("gan", ["--n", str(10 ** 15)], "--n .* GB"), ("part3", ["--batch-size", "10" * 8], "GB"),
    ("part2", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("part2", ["--device", "tpu"], "--device 'tpu'"), ("gan", ["--device", "meta"], "--device"),
    ("part2", ["--device", "cuda:x"], "--device"),
])
def test_out_of_range_flags_are_one_line_before_work(main, argv, words, mnist_dir, tmp_path):
    """Seeds >= 2**63 or < 0, batch sizes and --n in the 1e18 range (the message gives the memory
    estimate), a batch of 0, unknown devices (tpu, meta, cuda:x): one line, nothing written.
    Before: tracebacks (torch.manual_seed, allocation, torch.device), or 'the loss became nan'."""
    with pytest.raises(UserError, match=words):
        script(main, mnist_dir, tmp_path / "runs", "--steps", "1", *argv)()
    assert not list(tmp_path.iterdir())


def edit(key, value):
    def change(ckpt):
        where = ckpt["meta"] if key.startswith("meta.") else ckpt
        where[key.removeprefix("meta.")] = value
    return change


@pytest.mark.parametrize("change, verb, words", [
    (edit("step", "3"), "--resume", "step"), (edit("step", -1), "--sample-from", "step"),
    (edit("step", 2.5), "--resume", "step"), (edit("history", "abc"), "--sample-from", "history"),
    (edit("history", [1.0, "x"]), "--resume", "history"),
    (edit("rng", torch.zeros(5)), "--resume", "rng"), (edit("rng", [1, 2]), "--resume", "rng"),
    (edit("optimizer", [1, 2]), "--resume", "optimizer"),
    (edit("meta.lr", float("nan")), "--resume", "lr"),
    (edit("meta.batch_size", 0), "--resume", "batch_size"),
    (edit("meta.conditional", "yes"), "--sample-from", "conditional"),
    (edit("meta.model_config", dict(part2_diffusion.PRESETS["cpu"], image_size=28, in_channels=1,
                                    num_classes=None, base_channels=100_000)),
     "--sample-from", "GB of weights"),
])
def test_a_hand_edited_checkpoint_is_refused_by_type_and_shape(change, verb, words, copy,
                                                               mnist_dir):
    """Entries that pass the key check but have the wrong type or range: step a string, negative or
    a float; history a string or with a non-number; rng not a uint8 tensor; optimizer a list; a
    NaN lr; a batch size of 0; conditional a string; a model config that asks for gigabytes.
    Before: tracebacks deep in the work (or a 21 GB allocation)."""
    ckpt = torch.load(copy / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, copy / "checkpoint.pt")
    with pytest.raises(UserError, match=words):
        part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), verb, str(copy), "--steps",
                              "3", *FAST_DRAW])


def full_disk(monkeypatch):
    def write_bytes(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("what", ["gan checkpoint", "autoencoder cache", "classifier cache"])
def test_a_full_disk_is_one_line_for_every_file_of_weights(what, mnist_dir, tmp_path,
                                                            monkeypatch):
    """A full disk while writing the DCGAN's checkpoint, the autoencoder cache or the classifier
    cache: 'the disk is full' in one line, no temporary file left. Before: a RuntimeError traceback
    from torch's writer after minutes of work (Part 2 already gave the line)."""
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    for cache in (autoencoder.CACHE_FILE, metrics.CLASSIFIER_FILE):
        (data_dir / cache).unlink(missing_ok=True)
    monkeypatch.setattr(autoencoder, "train", lambda images, log, **_: autoencoder.Autoencoder())
    monkeypatch.setattr(metrics, "train_classifier",
                        lambda x, y, log: metrics.make_classifier())
    full_disk(monkeypatch)
    with pytest.raises(UserError, match="disk is full"):
        if what == "gan checkpoint":
            script("gan", data_dir, tmp_path / "runs", "--steps", "2")()
        elif what == "autoencoder cache":
            autoencoder.load_or_train(data_dir, log=lambda _: None)
        else:
            metrics.load_or_train_classifier(data_dir, log=lambda _: None)
    assert not list(tmp_path.rglob(".*tmp*"))


def test_the_caches_and_outputs_are_checked_writable_before_work(mnist_dir, tmp_path,
                                                                 monkeypatch):
    """autoencoder.py and captions.py with an --out that is a folder, and the autoencoder cache in a
    folder that cannot be written: refused before the work (training is made to fail loudly here).
    Before: the error came only after the training or the figure."""
    def no_work(*args, **kwargs):
        raise AssertionError("worked before checking where its result goes")
    monkeypatch.setattr(autoencoder, "train", no_work)
    monkeypatch.setattr(autoencoder, "load_or_train", no_work)
    monkeypatch.setattr(captions, "measure", no_work)
    for main in (autoencoder.main, captions.main):
        with pytest.raises(UserError, match="not a regular file"):
            main(["--data-dir", str(mnist_dir), "--out", str(tmp_path)])
    monkeypatch.undo()
    monkeypatch.setattr(autoencoder, "train", no_work)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match="cannot write"):
        autoencoder.load_or_train(blocked / "data", log=lambda _: None)


# --- 11. messages that say what happened ----------------------------------------------------------

def test_a_guided_divergence_names_guidance_and_folder_names_are_exact():
    """A non-finite output under --guidance 1e30 names --guidance, not --lr (without guidance it
    still names --lr); --eta 0.3 and 0.30000001, --guidance 2 and 2.0000001 draw into different
    folders, while the defaults keep their names (ddim50-eta0.5-n64-seed0, guidance2)."""
    nan = torch.tensor([float("nan")])
    with pytest.raises(UserError, match="with --guidance 1e\\+30.*smaller --guidance"):
        runs.finite(nan, 1e30)
    with pytest.raises(UserError, match="lower --lr"):
        runs.finite(nan)
    name = part2_diffusion.sample_folder_name
    get = part2_diffusion.get_args
    assert name(get(["--sampler", "ddim", "--eta", "0.3"])) != \
        name(get(["--sampler", "ddim", "--eta", "0.30000001"]))
    assert name(get(["--sampler", "ddim", "--eta", "0.30000001"])) == \
        "ddim50-eta0.30000001-n64-seed0"
    assert name(get(["--sampler", "ddim", "--eta", "0.5"])) == "ddim50-eta0.5-n64-seed0"
    assert name(get(["--guidance", "2"])) == "ddpm250-guidance2-n64-seed0"
    assert name(get(["--guidance", "2.0000001"])) == "ddpm250-guidance2.0000001-n64-seed0"
    assert part3.sample_folder_name(part3.get_args(["--guidance", "3.00000001"])) == \
        "prompts-guidance3.00000001-ddim50-seed0"


def test_impossible_files_and_paths_are_one_line(tmp_path, mnist_dir):
    """A .npy whose header claims 10^12 images (the file holds 20), a --runs folder and an output
    file with a name longer than the system allows: one line each. Before: MemoryError and
    OSError(ENAMETOOLONG) tracebacks."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr="<f4", fortran_order=False,
                                                      shape=(10 ** 12, 1, 28, 28)))
    (tmp_path / "big.npy").write_bytes(header.getvalue() + bytes(20 * 28 * 28 * 4))
    with pytest.raises(UserError, match="cut short"):
        metrics.main([str(tmp_path / "big.npy")])
    with pytest.raises(UserError, match="cannot write"):
        part2_diffusion.main([*TINY, "--data-dir", str(mnist_dir), "--runs",
                              str(tmp_path / ("r" * 300)), "--steps", "1"])
    with pytest.raises(UserError, match="cannot write"):
        outputs.save_json(tmp_path / ("x" * 300 + ".json"), {})


def test_running_out_of_memory_is_one_line(capsys):
    """ulimit -v, or an allocation no check foresaw: MemoryError is one line and exit 2, not a
    traceback."""
    def main():
        raise MemoryError
    assert exits(main, capsys) == (2, ["error: out of memory; use a smaller --batch-size or --n, "
                                       "or free some memory"])


@pytest.mark.parametrize("what", ["part2", "part3", "gan", "autoencoder cache", "classifier cache"])
def test_too_little_disk_is_refused_before_the_work(what, mnist_dir, tmp_path, monkeypatch):
    """A disk with 1 MB free: every training script (Part 2, Part 3, the DCGAN) and both caches stop
    in one line that gives the space needed, before a step of training and before a file of weights
    is written. Before: only Part 2 named the space, and only after its first save failed."""
    def no_work(*args, **kwargs):
        raise AssertionError("trained before checking the disk")
    monkeypatch.setattr(autoencoder, "train", no_work)
    monkeypatch.setattr(metrics, "train_classifier", no_work)
    monkeypatch.setattr(part2_diffusion, "training_loss", no_work)
    monkeypatch.setattr(gan_baseline, "discriminator_step", no_work)
    monkeypatch.setattr(part3, "encode_digits", lambda ae, images, labels, device: dict(
        latents=torch.zeros(16, *part3.LATENT), labels=[0] * 16, width=[1.0] * 16,
        slant=[0.0] * 16))
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(
        10 ** 9, 10 ** 9 - 10 ** 6, 10 ** 6))
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    for cache in (autoencoder.CACHE_FILE, metrics.CLASSIFIER_FILE):
        (data_dir / cache).unlink(missing_ok=True)
    if what == "part3":  # a cached autoencoder, so that only the run's own checkpoints are checked
        torch.save(autoencoder.Autoencoder().state_dict(), data_dir / autoencoder.CACHE_FILE)
    with pytest.raises(UserError, match=r"1 MB free, and .* needs about \d+ MB") as e:
        if what in ("part2", "part3", "gan"):
            script(what, data_dir, tmp_path / "runs", "--steps", "2")()
        elif what == "autoencoder cache":
            autoencoder.load_or_train(data_dir, log=lambda _: None)
        else:
            metrics.load_or_train_classifier(data_dir, log=lambda _: None)
    assert "\n" not in str(e.value) and not list(tmp_path.rglob("checkpoint.pt"))
