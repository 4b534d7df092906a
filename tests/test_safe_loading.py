"""Issue 25, class 1: loading a file never runs code from it.

A pickle may name any function to call while it loads. Each file kind that a user can hand to the
lab gets a planted payload (an object whose unpickling calls os.mkdir on a marker path), and every
way of reading it must refuse the file, in one line, without the marker ever appearing:
  - a Part 2 checkpoint with one extra pickled object: --sample-from, --resume;
  - a file that is only a payload, named checkpoint.pt: --sample-from;
  - a Part 3 checkpoint (part3's load_run, which --sample-from, --resume and
    `experiments.py guidance --run` go through);
  - a GAN checkpoint (experiments.py reads its history) and any checkpoint a benchmark reads;
  - the classifier cache (metrics.py) and the autoencoder cache (autoencoder.py);
  - a samples .npy holding an object array (metrics.py);
  - a CIFAR-10 batch (data.py).
Every checkpoint the lab writes itself (the reference one included) loads with the safe loader."""
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import autoencoder
import data
import metrics
import part2_diffusion
import part3_text_to_image as part3
import runs
from outputs import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--T", "20", "--batch-size", "8", "--n", "4", "--ckpt-every", "2",
        "--sampler", "ddim", "--sampling-steps", "2"]


class Payload:
    """Unpickling this calls os.mkdir(marker): code run by merely loading the file."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    part2_diffusion.main(TINY + ["--steps", "2", "--name", "tiny", "--data-dir", str(mnist_dir),
                                 "--runs", str(folder)])
    return folder / "tiny"


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "loading the file ran the planted code"


def planted_run(trained, tmp_path, marker, only_payload=False):
    """A copy of the tiny run whose checkpoint carries a payload (or is nothing but one)."""
    run = tmp_path / "runs" / "planted"
    shutil.copytree(trained, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save(Payload(marker) if only_payload else dict(ckpt, note=Payload(marker)),
               run / "checkpoint.pt")
    return run


def refused(call):
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("only_payload", [False, True], ids=["extra-object", "only-payload"])
def test_part2_sample_from_never_runs_a_payload(trained, tmp_path, marker, only_payload):
    run = planted_run(trained, tmp_path, marker, only_payload)
    message = refused(lambda: part2_diffusion.main(["--sample-from", str(run), "--n", "4",
                                                    "--sampler", "ddim", "--sampling-steps", "2"]))
    assert "could run code" in message and str(run) in message
    assert not (run / "samples").exists()


def test_part2_resume_never_runs_a_payload(trained, tmp_path, marker, mnist_dir):
    run = planted_run(trained, tmp_path, marker)
    message = refused(lambda: part2_diffusion.main(
        TINY + ["--resume", str(run), "--steps", "4", "--data-dir", str(mnist_dir)]))
    assert "could run code" in message


def test_every_reader_of_a_checkpoint_refuses_a_payload(trained, tmp_path, marker):
    """Part 3's load_run (its --sample-from, --resume and experiments.py guidance --run), and
    runs.load_safely, which experiments.py and the benchmarks use for GAN and Part 2 checkpoints."""
    run = planted_run(trained, tmp_path, marker)
    assert "could run code" in refused(lambda: part3.load_run(run))
    assert "could run code" in refused(lambda: runs.load_safely(run / "checkpoint.pt"))


def test_a_damaged_checkpoint_is_not_called_unsafe(trained, tmp_path):
    run = tmp_path / "runs" / "cut"
    shutil.copytree(trained, run)
    data_bytes = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data_bytes[: len(data_bytes) // 2])
    message = refused(lambda: runs.load_safely(run / "checkpoint.pt"))
    assert "damaged" in message and "could run code" not in message


def test_the_caches_refuse_a_payload(tmp_path, marker):
    classifier = tmp_path / metrics.CLASSIFIER_FILE
    torch.save({"state_dict": {}, "note": Payload(marker)}, classifier)
    refused(lambda: metrics.load_or_train_classifier(tmp_path, classifier, log=lambda *_: None))
    torch.save({"weight": Payload(marker)}, tmp_path / autoencoder.CACHE_FILE)
    refused(lambda: autoencoder.load_or_train(tmp_path, log=lambda *_: None))


def test_samples_and_cifar_batches_refuse_a_payload(tmp_path, marker):
    samples = tmp_path / "samples.npy"
    np.save(samples, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    refused(lambda: metrics.load_samples(samples))
    buffer = io.BytesIO()
    pickle.dump({"data": Payload(marker), "labels": [0]}, buffer, protocol=2)
    with pytest.raises(data.DataError, match="not a CIFAR-10 batch"):
        data._cifar_batch(buffer.getvalue(), "data_batch_1")


def test_every_checkpoint_the_lab_writes_loads_safely(trained):
    for path in (trained / "checkpoint.pt", ROOT / "reference" / "checkpoint.pt"):
        ckpt = runs.load_safely(path)
        assert {"meta", "ema", "step", "history"} <= set(ckpt)
