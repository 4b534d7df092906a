"""Tests for metrics.py: the Frechet distance against closed forms, precision/recall on point sets
with known answers, the classifier's learning, and the command line on every sample format and on
bad input.

The command-line tests run on a small synthetic "MNIST" written as IDX files to a temporary folder,
so they need no download; the tests marked `mnist` use the real files in $MNIST_DIR and skip without
them."""
import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import metrics
from outputs import run_main

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("MNIST_DIR")
needs_mnist = pytest.mark.skipif(not (MNIST_DIR and Path(MNIST_DIR).is_dir()),
                                 reason="set $MNIST_DIR")



def random_spd(rng, d, rank=None):
    """A random symmetric positive semi-definite (d, d) matrix of the given rank
    (full by default)."""
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# --- Frechet distance -----------------------------------------------------------------------------

def test_frechet_diagonal_matches_closed_form():
    # Diagonal covariances commute: Tr((C1 C2)^(1/2)) = sum_i sqrt(a_i b_i), so
    # d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == \
        pytest.approx(expected, rel=1e-12)


def test_frechet_one_dimension():
    # N(m1, s1^2) and N(m2, s2^2): d^2 = (m1 - m2)^2 + (s1 - s2)^2.
    d2 = metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]),
                                  np.array([-2.0]), np.array([[0.25]]))
    assert d2 == pytest.approx(3.0 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_commuting_rotated_covariances():
    # C1 = Q diag(a) Q^T and C2 = Q diag(b) Q^T share eigenvectors but are far from diagonal.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    a, b = rng.uniform(0.1, 2, size=8), rng.uniform(0.1, 2, size=8)
    mu = rng.normal(size=8)
    expected = 0.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = metrics.frechet_distance(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_2d_general_closed_form():
    # For 2x2 matrices, Tr(M^(1/2)) = sqrt(Tr M + 2 sqrt(det M)) (the eigenvalues l1, l2 give
    # (sqrt l1 + sqrt l2)^2 = l1 + l2 + 2 sqrt(l1 l2)); here M = C1 C2, which does not commute.
    c1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    c2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    tr_sqrt = math.sqrt(np.trace(c1 @ c2) + 2 * math.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = 8.0 + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert not np.allclose(c1 @ c2, c2 @ c1)
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_frechet_general_against_eigenvalues_of_the_product(seed):
    # Independent route: the eigenvalues of the non-symmetric C1 C2 (np.linalg.eig), square-rooted.
    rng = np.random.default_rng(seed)
    c1, c2 = random_spd(rng, 20), random_spd(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    tr_sqrt = np.sqrt(np.linalg.eigvals(c1 @ c2).real.clip(0)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rank", [None, 5])
def test_frechet_is_symmetric_and_zero_on_identical_sets(rank):
    # rank 5 of 30: a singular covariance, as when features come from fewer images than dimensions.
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=30), rng.normal(size=30)
    c1, c2 = random_spd(rng, 30, rank), random_spd(rng, 30, rank)
    d12 = metrics.frechet_distance(mu1, c1, mu2, c2)
    d21 = metrics.frechet_distance(mu2, c2, mu1, c1)
    assert d12 > 0.1
    assert d12 == pytest.approx(d21, rel=1e-9)
    feats = rng.normal(size=(20, 30)) ** 2            # 20 points in 30 dimensions: cov has rank 19
    mu, cov = metrics.gaussian_fit(feats)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-6 * np.trace(cov)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- precision and recall -------------------------------------------------------------------------

def test_precision_recall_by_hand_on_a_line():
    # Real points 0..4 on a line, k = 3: the 3rd-nearest-neighbour radii are 3, 2, 2, 2, 3, so the
    # real manifold is [0-3, 4+3] = [-3, 7].
    # Generated: two points inside (-2.5, 6.5), three outside.
    real = np.arange(5.0)[:, None]
    fake = np.array([-3.5, -2.5, 6.5, 7.5, 100.0])[:, None]
    precision, recall = metrics.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(2 / 5)
    # The generated point -3.5 has neighbours at 1, 10, 11: its ball of radius 11 swallows every
    # real point. Recall is 1: the paper's outlier caveat, visible in four lines.
    assert recall == 1.0


def test_precision_recall_mode_dropping_and_junk():
    # Two well separated real clusters A and B. Copying A only: everything generated is real-looking
    # (precision 1) but half of the real data is missed (recall 1/2).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 4))
    b = rng.normal(size=(40, 4)) + 100.0
    junk = rng.normal(size=(40, 4)) - 100.0
    real = np.concatenate([a, b])
    assert metrics.precision_recall(real, a) == (1.0, 0.5)
    assert metrics.precision_recall(real, np.concatenate([a, junk])) == (0.5, 0.5)
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real, junk) == (0.0, 0.0)


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(ValueError, match="more than 3"):
        metrics.precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3)


# --- class coverage, sample formats, blur ---------------------------------------------------------

def test_kl_from_uniform():
    assert metrics.kl_from_uniform([7] * 10) == pytest.approx(0.0, abs=1e-15)
    assert metrics.kl_from_uniform([0, 0, 0, 50, 0, 0, 0, 0, 0, 0]) == pytest.approx(math.log(10))
    assert metrics.kl_from_uniform([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) == pytest.approx(math.log(5))


def test_as_images_formats():
    u = np.array([0, 255, 51], dtype=np.uint8).repeat(28 * 28 // 3 + 1)[: 28 * 28]
    u = u.reshape(1, 28, 28)
    x = metrics.as_images(u)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    f = u.astype(np.float32) / 127.5 - 1
    assert torch.equal(metrics.as_images(f), x)
    assert torch.equal(metrics.as_images(torch.from_numpy(f[:, None])), x)
    assert metrics.as_images(f * 1.0005).max() == 1           # round-off past +-1 is clipped
    for bad, match in [(np.zeros((2, 3, 28, 28), np.float32), "shape"),
                       (np.zeros((0, 28, 28)), "no samples"), (f * 1.1, "range"),
                       (np.zeros((1, 28, 28), np.int64), "dtype"),
                       (np.full((1, 28, 28), np.nan), "NaN")]:
        with pytest.raises(ValueError, match=match):
            metrics.as_images(bad)


def test_box_blur():
    x = torch.full((1, 1, 5, 5), -1.0)
    x[0, 0, 2, 2] = 1.0
    y = metrics.box_blur(x)
    # The bright pixel spreads over its 3x3 neighbourhood: (8 * -1 + 1) / 9 each;
    # the rest stays black.
    assert torch.allclose(y[0, 0, 1:4, 1:4], torch.full((3, 3), -7 / 9))
    assert (y[0, 0, 0] == -1).all() and (y[0, 0, :, 4] == -1).all()
    # a box blur with black padding keeps the sum
    assert y.sum() == pytest.approx(x.sum().item(), abs=1e-5)


# --- the classifier -------------------------------------------------------------------------------

def blocks(n, seed):
    """A stand-in for digits: class c is a bright 6x6 block in the c-th cell of a 2x5 grid, jittered
    by up to 2 pixels, on a noisy black background.
    Returns (n, 1, 28, 28) float32 in [-1, 1], (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = torch.full((n, 1, 28, 28), -1.0)
    jitter = torch.randint(-2, 3, (n, 2), generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = 4 + 12 * (c // 5) + jitter[i, 0], 1 + 5 * (c % 5) + jitter[i, 1].clamp(min=-1)
        x[i, 0, r:r + 6, col:col + 6] = 1.0
    return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1), labels


@pytest.fixture(scope="module")
def real_mnist():
    train_x, train_y, _ = data.load("mnist", MNIST_DIR, train=True, download=False)
    test_x, test_y, _ = data.load("mnist", MNIST_DIR, train=False, download=False)
    return train_x, train_y, test_x, test_y


@pytest.fixture(scope="module")
def quick_real_classifier(real_mnist):
    train_x, train_y, _, _ = real_mnist
    return metrics.train_classifier(train_x[:3000], train_y[:3000], epochs=3, log=lambda _: None)


@pytest.mark.mnist
@needs_mnist
def test_classifier_learns_real_digits_quickly(real_mnist, quick_real_classifier):
    # 3000 training digits, 3 epochs: a few seconds, about 94%.
    # (The cached one: 50000 digits, about 99%.)
    _, _, test_x, test_y = real_mnist
    assert metrics.accuracy(quick_real_classifier, test_x[:2000], test_y[:2000]) >= 0.92


@pytest.mark.mnist
@needs_mnist
def test_calibration_orders_real_blurred_noise(real_mnist, quick_real_classifier):
    train_x, train_y, test_x, _ = real_mnist
    # A quick classifier, N = 300 and a 2000-digit reference keep this test fast. The gross ordering
    # holds even so; the finer one (noise sigma 0.1 against the floor) needs the full classifier
    # and N = 1000.
    rows = dict(metrics.calibrate(quick_real_classifier, train_x, train_y, test_x[:2000], n=300))
    floor, half, noise = (rows["real held-out digits (floor)"], rows["held-out digits 0-4 only"],
                          rows["pure noise N(0,1) clipped"])
    assert floor["fid"] < rows["3x3 box blur of test digits (bar)"]["fid"] < noise["fid"]
    assert floor["fid"] < half["fid"]
    # half the modes dropped: recall falls ...
    assert half["recall"] < floor["recall"] - 0.1
    # ... and the class histogram shows it
    assert half["kl_uniform"] > 0.4 > 0.1 > floor["kl_uniform"]
    assert noise["recall"] < 0.05 and noise["kl_uniform"] > 1.0
    assert all(r["n"] == 300 and r["n_reference"] == 2000 and sum(r["class_histogram"]) == 300
               for r in rows.values())


# --- the command line -----------------------------------------------------------------------------

def write_idx(path, array):
    """Write a uint8 array as a gzipped IDX file (magic 2049 for labels, 2051 for images)."""
    header = struct.pack(">I", 0x0800 + array.ndim) + \
        b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def to_uint8(x):
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """(data folder, classifier path, training log): a tiny MNIST look-alike (the blocks above) in
    data.py's mnist/ layout, and a classifier trained on it by load_or_train_classifier, as on
    first use."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for prefix, n, seed in [("train", 600, 0), ("t10k", 300, 1)]:
        x, y = blocks(n, seed)
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", to_uint8(x[:, 0]))
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", y.numpy())
    log = []
    metrics.load_or_train_classifier(root, root / "clf.pt", log=log.append)
    return root, root / "clf.pt", log


def test_classifier_is_trained_once_then_loaded(fake_mnist):
    root, clf, log = fake_mnist
    assert "training one on MNIST train[:600]" in log[0] and "test accuracy" in log[-1]
    # the cache records what it learnt from, and how well
    info = torch.load(clf, weights_only=True)
    assert info["n_train"] == 600 and info["n_test"] == 300 and info["test_accuracy"] > 0.95
    again = []
    model, info2 = metrics.load_or_train_classifier(root, clf, log=again.append)
    assert len(again) == 1 and again[0].startswith(f"classifier: {clf}")
    assert info2["test_accuracy"] == info["test_accuracy"]
    x, y = blocks(300, seed=1)                          # the test set written to the fake MNIST
    assert metrics.accuracy(model, x, y) == pytest.approx(info["test_accuracy"])
    assert metrics.features(model, x[:7]).shape == (7, 128)
    p = metrics.predict(model, x[:7])
    assert p.dtype == np.float64 and np.allclose(p.sum(axis=1), 1)


def cli(*argv):
    """Run metrics.main as the script would; return the exit status (0 when it returns)."""
    try:
        run_main(lambda: metrics.main([str(a) for a in argv]))
    except SystemExit as e:
        return e.code
    return 0


def test_cli_reads_every_sample_format(fake_mnist, tmp_path, capsys):
    root, clf, _ = fake_mnist
    x, _ = blocks(64, seed=5)
    u = to_uint8(x)                                            # (64, 1, 28, 28) uint8
    f = u.astype(np.float32) / 127.5 - 1
    formats = {"float4d": f, "float3d": f[:, 0], "uint8": u, "uint8_3d": u[:, 0],
               "float64": f.astype(np.float64)}
    results = {}
    for name, array in formats.items():
        np.save(tmp_path / f"{name}.npy", array)
        assert cli(tmp_path / f"{name}.npy", "--data-dir", root, "--classifier", clf,
                   "--json", tmp_path / f"{name}.json") == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "FID" in capsys.readouterr().out
    first = results["float4d"]
    assert first["n"] == 64 and first["n_reference"] == 300 and first["n_real_pr"] == 64
    assert sum(first["class_histogram"]) == 64 and first["classes_present"] == 10
    for r in results.values():
        assert r["fid"] == pytest.approx(first["fid"], rel=1e-6)
        assert (r["precision"], r["recall"], r["class_histogram"]) == \
            (first["precision"], first["recall"], first["class_histogram"])


BAD_SAMPLES = {
    "rgb.npy": (np.zeros((4, 3, 28, 28), np.float32), "shape"),
    "small.npy": (np.zeros((4, 1, 16, 16), np.float32), "shape"),
    "empty_array.npy": (np.zeros((0, 1, 28, 28), np.float32), "no samples"),
    "too_few.npy": (-np.ones((3, 1, 28, 28), np.float32), "more than 3"),
    "range255.npy": (np.full((4, 28, 28), 200.0, np.float32), "range"),
    "range01.npy": (np.full((4, 28, 28), 0.5, np.float32), "[0, 1]"),
    "nan.npy": (np.full((4, 28, 28), np.nan, np.float32), "NaN"),
}


@pytest.mark.parametrize("name", [*BAD_SAMPLES, "empty_file.npy", "text.npy", "missing.npy"])
def test_cli_rejects_bad_samples_with_one_line(name, fake_mnist, tmp_path, capsys):
    root, clf, _ = fake_mnist
    path = tmp_path / name
    if name in BAD_SAMPLES:
        np.save(path, BAD_SAMPLES[name][0])
    elif name == "empty_file.npy":
        path.write_bytes(b"")
    elif name == "text.npy":
        path.write_text("these are not samples\n")
    assert cli(path, "--data-dir", root, "--classifier", clf) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and name in err
    if name in BAD_SAMPLES:
        assert BAD_SAMPLES[name][1] in err


def test_cli_missing_classifier_and_no_data(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros((8, 28, 28), np.uint8))
    assert cli(tmp_path / "s.npy", "--data-dir", tmp_path / "nothing",
               "--classifier", tmp_path / "c.pt") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mnist not found" in err and not (tmp_path / "c.pt").exists()


def test_cli_corrupt_classifier(fake_mnist, tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros((8, 28, 28), np.uint8))
    (tmp_path / "c.pt").write_text("not a checkpoint")
    assert cli(tmp_path / "s.npy", "--data-dir", fake_mnist[0],
               "--classifier", tmp_path / "c.pt") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a classifier" in err


def test_script_exit_status(tmp_path):
    # The real entry point, in a fresh interpreter: exit status 2 and one line, no traceback.
    np.save(tmp_path / "bad.npy", np.zeros((2, 5)))
    proc = subprocess.run([sys.executable, str(ROOT / "metrics.py"), str(tmp_path / "bad.npy")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "shape (2, 5)" in proc.stderr
