"""data.py: loaders on small files written here (good and corrupt), downloads from a local mirror,
the offline fallback, the synthetic digits, and real MNIST when $MNIST_DIR names its folder."""
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from data import DataError

IMAGES, LABELS = data.IDX_FILES[True]  # the training split's file names, without .gz


def idx_bytes(array):
    """The IDX encoding of a uint8 array: magic (2049 for 1-D, 2051 for 3-D), sizes, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write(path, payload, gz):
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fake_mnist(folder, gz=True, n=(50, 20), seed=0):
    """Write all four IDX files with random images and labels; return the arrays, train then
    test."""
    rng = np.random.default_rng(seed)
    arrays = []
    for (image_name, label_name), count in zip((data.IDX_FILES[True], data.IDX_FILES[False]), n):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range, to check the scaling
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        write(Path(folder) / image_name, idx_bytes(images), gz)
        write(Path(folder) / label_name, idx_bytes(labels), gz)
        arrays += [images, labels]
    return arrays


def assert_one_line_naming(error, *names):
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message


# --------------------------------------------------------------------------------------------------
# MNIST-format files

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    path = write(tmp_path / "x-idx3-ubyte", idx_bytes(images), gz)
    out = data.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_each_layout(tmp_path, layout, gz):
    train_x, train_y, test_x, test_y = fake_mnist(tmp_path / layout, gz=gz)
    for train, (x, y) in ((True, (train_x, train_y)), (False, (test_x, test_y))):
        images, labels, used = data.load("mnist", data_dir=tmp_path, train=train, download=False)
        assert used == "mnist"
        assert images.dtype == torch.float32 and images.shape == (len(x), 1, 28, 28)
        assert labels.dtype == torch.int64 and labels.shape == (len(x),)
        assert (images[:, 0] - (torch.from_numpy(x).float() / 127.5 - 1)).abs().max() < 1e-6
        assert torch.equal(labels, torch.from_numpy(y).long())
    assert images.min() == -1 and images.max() == 1  # pixel 0 -> -1, pixel 255 -> +1


def test_load_fashion_mnist_from_torchvision_layout(tmp_path):
    x, y, _, _ = fake_mnist(tmp_path / "FashionMNIST" / "raw", seed=3)
    images, labels, used = data.load("fashion-mnist", data_dir=tmp_path, download=False)
    assert used == "fashion-mnist"
    assert torch.equal(labels, torch.from_numpy(y).long())
    assert torch.equal(((images[:, 0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(x))


def test_load_images_is_the_first_n_images_of_load(tmp_path):
    fake_mnist(tmp_path / "mnist")
    images, _, _ = data.load("mnist", data_dir=tmp_path, download=False)
    first = data.load_images(2, "mnist", data_dir=tmp_path, download=False)
    assert first.dtype == torch.float32 and first.shape == (2, 1, 28, 28)
    assert torch.equal(first, images[:2])
    # asking for more than the split holds gives all of it
    assert torch.equal(data.load_images(1000, "mnist", data_dir=tmp_path, download=False), images)


def corrupt(folder, how):
    """Write good train files into `folder`, then spoil one the way `how` says; return the spoiled
    path."""
    images, labels, _, _ = fake_mnist(folder, gz=True)
    image_path, label_path = folder / f"{IMAGES}.gz", folder / f"{LABELS}.gz"
    if how == "bad magic":
        image_path.write_bytes(gzip.compress(b"\x00\x00\x08\x04" + idx_bytes(images)[4:]))
    elif how == "truncated gzip":
        image_path.write_bytes(image_path.read_bytes()[:-100])
    elif how == "truncated data":
        image_path.write_bytes(gzip.compress(idx_bytes(images)[:-28]))
    elif how == "wrong shape":
        image_path.write_bytes(gzip.compress(idx_bytes(images[:, :27, :])))
    elif how == "labels where images belong":
        image_path.write_bytes(gzip.compress(idx_bytes(labels)))
    elif how == "count mismatch":
        label_path.write_bytes(gzip.compress(idx_bytes(labels[:-1])))
    elif how == "label out of range":
        label_path.write_bytes(gzip.compress(idx_bytes(np.full_like(labels, 10))))
    return label_path if how in ("count mismatch", "label out of range") else image_path


@pytest.mark.parametrize("how", ["bad magic", "truncated gzip", "truncated data", "wrong shape",
                                 "labels where images belong", "count mismatch",
                                 "label out of range"])
def test_corrupt_idx_raises_one_line_naming_the_file(tmp_path, how):
    bad = corrupt(tmp_path / "mnist", how)
    # A corrupt local file is an error even with fallback on: the user has a file to fix, not a
    # missing dataset.
    with pytest.raises(DataError) as error:
        data.load("mnist", data_dir=tmp_path, download=False, fallback=True)
    assert_one_line_naming(error, bad)


def test_load_images_checks_the_file_and_never_falls_back(tmp_path):
    bad = corrupt(tmp_path / "mnist", "wrong shape")
    with pytest.raises(DataError) as error:
        data.load_images(1, "mnist", data_dir=tmp_path, download=False)
    assert_one_line_naming(error, bad)
    with pytest.raises(DataError) as error:
        data.load_images(1, "mnist", data_dir=tmp_path / "empty", download=False)
    assert_one_line_naming(error, tmp_path / "empty" / "mnist", f"{IMAGES}.gz")


def test_data_error_is_a_user_error():
    from outputs import UserError
    assert issubclass(DataError, UserError)  # so run_main prints it as one line and exits 2


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="fashion-mnist"):
        data.load("svhn", download=False)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 format

def cifar_batches(n=6, seed=0):
    """Small batches in the CIFAR-10 format, pickled with protocol 2 like the originals; and their
    arrays."""
    rng = np.random.default_rng(seed)
    raws, arrays = {}, {}
    for name in data.CIFAR_BATCHES[True] + data.CIFAR_BATCHES[False]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        batch = {"batch_label": name, "data": x, "labels": y, "filenames": ["a.png"] * n}
        raws[name] = pickle.dumps(batch, protocol=2)
        arrays[name] = (x, y)
    return raws, arrays


def write_cifar(tmp_path, as_tarball, raws):
    if not as_tarball:
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        for name, raw in raws.items():
            (folder / name).write_bytes(raw)
        return folder
    path = tmp_path / "cifar10" / data.CIFAR_TAR
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in raws.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.mark.parametrize("as_tarball", [False, True])
def test_load_cifar10(tmp_path, as_tarball):
    raws, arrays = cifar_batches()
    write_cifar(tmp_path, as_tarball, raws)
    images, labels, used = data.load("cifar10", data_dir=tmp_path, train=True, download=False)
    assert used == "cifar10" and images.shape == (30, 3, 32, 32) and images.dtype == torch.float32
    x, y = arrays["data_batch_2"]  # the second batch lands at rows 6..11
    assert labels[6:12].tolist() == y
    # Each row is the 1024 red values, then green, then blue, each plane row by row.
    assert abs(images[6, 1, 0, 5].item() - (x[0, 1024 + 5] / 127.5 - 1)) < 1e-6
    test_images, test_labels, _ = data.load("cifar10", data_dir=tmp_path, train=False,
                                            download=False)
    assert test_images.shape == (6, 3, 32, 32) and test_labels.tolist() == arrays["test_batch"][1]
    first = data.load_images(8, "cifar10", data_dir=tmp_path, train=True, download=False)
    assert torch.equal(first, images[:8])


def test_cifar10_corrupt_files(tmp_path):
    raws, _ = cifar_batches()
    folder = write_cifar(tmp_path, False, raws)
    wrong_width = {"data": np.zeros((6, 100), np.uint8), "labels": [0] * 6}
    (folder / "test_batch").write_bytes(pickle.dumps(wrong_width))
    with pytest.raises(DataError) as error:
        data.load("cifar10", data_dir=tmp_path, train=False, download=False)
    assert_one_line_naming(error, folder / "test_batch", "3072")

    (folder / "test_batch").write_bytes(raws["test_batch"][:-50])  # a pickle cut short
    with pytest.raises(DataError) as error:
        data.load("cifar10", data_dir=tmp_path, train=False, download=False)
    assert_one_line_naming(error, folder / "test_batch")


def test_cifar10_truncated_tarball(tmp_path):
    raws, _ = cifar_batches()
    path = write_cifar(tmp_path, True, raws)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as error:
        data.load("cifar10", data_dir=tmp_path, download=False)
    assert_one_line_naming(error, path)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_cifar10_pickle_may_not_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raws, _ = cifar_batches()
    raws["test_batch"] = pickle.dumps({"data": Boom(), "labels": []}, protocol=2)
    folder = write_cifar(tmp_path, False, raws)
    with pytest.raises(DataError, match="refusing") as error:
        data.load("cifar10", data_dir=tmp_path, train=False, download=False)
    assert_one_line_naming(error, folder / "test_batch")
    assert not (tmp_path / "pwned.txt").exists()


# --------------------------------------------------------------------------------------------------
# Downloads, from a local file:// mirror

@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """Mirror 1 serves damaged copies, mirror 2 good ones; MD5 is patched to the good copies'
    sums."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    arrays = fake_mnist(good, gz=True)
    bad.mkdir()
    for f in good.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:-10])
    sums = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in good.iterdir()}
    monkeypatch.setitem(data.MD5, "mnist", sums)
    monkeypatch.setitem(data.MIRRORS, "mnist", (bad.as_uri() + "/", good.as_uri() + "/"))
    return arrays, good, bad


def test_download_checks_md5_and_tries_the_next_mirror(tmp_path, mirrors, capsys):
    (train_x, train_y, _, _), good, bad = mirrors
    images, labels, used = data.load("mnist", data_dir=tmp_path / "data", train=True)
    assert used == "mnist" and torch.equal(labels, torch.from_numpy(train_y).long())
    err = capsys.readouterr().err
    assert f"downloading {bad.as_uri()}/{IMAGES}.gz" in err and "MD5" in err
    assert f"downloading {good.as_uri()}/{IMAGES}.gz" in err and "%" in err  # the progress line
    # Only this split was fetched, into data/mnist/, with no temporary file left behind by the
    # failed attempt.
    fetched = sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir())
    assert fetched == [f"{IMAGES}.gz", f"{LABELS}.gz"]
    # The next call finds the files on disk and does not download again.
    data.load("mnist", data_dir=tmp_path / "data", train=True)
    assert "downloading" not in capsys.readouterr().err


def test_download_with_every_mirror_failing(tmp_path, mirrors, monkeypatch, capsys):
    _, _, bad = mirrors
    monkeypatch.setitem(data.MIRRORS, "mnist",
                        ((tmp_path / "nowhere").as_uri() + "/", bad.as_uri() + "/"))
    with pytest.raises(DataError) as error:
        data.load("mnist", data_dir=tmp_path / "data")
    assert_one_line_naming(error, "download failed", tmp_path / "data" / "mnist")
    assert "failed" in capsys.readouterr().err
    assert not any((tmp_path / "data" / "mnist").iterdir())  # nothing half-written


# --------------------------------------------------------------------------------------------------
# The offline fallback and the synthetic digits

def test_missing_data_without_fallback(tmp_path):
    with pytest.raises(DataError) as error:
        data.load("mnist", data_dir=tmp_path, download=False)
    assert_one_line_naming(error, "mnist", tmp_path / "mnist", f"{IMAGES}.gz")
    with pytest.raises(DataError):  # the stand-in replaces MNIST only
        data.load("cifar10", data_dir=tmp_path, download=False, fallback=True)


def test_fallback_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_warned_synthetic", False)
    images, labels, used = data.load("mnist", data_dir=tmp_path, train=False, download=False,
                                     fallback=True)
    assert used == "synthetic-digits"
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert images.min() >= -1 and images.max() <= 1
    # A second fallback in the same run stays quiet (and is kept small here, to save time).
    monkeypatch.setattr(data, "synthetic_digits",
                        lambda n, seed: (torch.zeros(2, 1, 28, 28), torch.zeros(2)))
    used = data.load("mnist", data_dir=tmp_path, download=False, fallback=True)[2]
    assert used == "synthetic-digits"
    err = capsys.readouterr().err
    assert err.count("NOT MNIST") == 1 and f"{IMAGES}.gz" in err


def test_synthetic_digits_format_and_determinism():
    x, y = data.synthetic_digits(100, seed=5)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) == set(range(10))
    x2, y2 = data.synthetic_digits(100, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.synthetic_digits(100, seed=6)
    assert not torch.equal(x, x3)
    # Dark background, some full ink, and the corners empty, as in MNIST.
    assert (x < -0.99).float().mean() > 0.6 and x.max() > 0.9
    assert (x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] == -1).all()
    assert data.synthetic_digits(4, size=32)[0].shape == (4, 1, 32, 32)


def test_synthetic_digits_look_like_their_labels():
    """A nearest-class-mean classifier fitted on one seed must read the labels of another far above
    chance."""
    x, y = data.synthetic_digits(1000, seed=0)
    means = torch.stack([x[y == d].mean(0).flatten() for d in range(10)])
    x_new, y_new = data.synthetic_digits(300, seed=1)
    guess = torch.cdist(x_new.flatten(1), means).argmin(1)
    assert (guess == y_new).float().mean() > 0.6
    # Pen strokes as wide as MNIST's (2.1 pixels on average by this measure).
    assert 1.7 < data.stroke_width((x + 1) / 2).mean() < 2.5


# --------------------------------------------------------------------------------------------------
# Real MNIST

MNIST_DIR = os.environ.get("MNIST_DIR")


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST_DIR or not Path(MNIST_DIR).is_dir(),
                    reason="set MNIST_DIR to a folder with MNIST")
def test_real_mnist():
    # the published class sizes
    counts = {True: [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
              False: [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}
    for train, n in ((True, 60000), (False, 10000)):
        images, labels, used = data.load("mnist", data_dir=MNIST_DIR, train=train, download=False)
        assert used == "mnist" and images.shape == (n, 1, 28, 28) and labels.shape == (n,)
        assert images.min() == -1 and images.max() == 1
        assert torch.bincount(labels, minlength=10).tolist() == counts[train]
        # MNIST's mean intensity, 0.13 on the [0, 1] scale
        assert 0.12 < (images.mean() + 1) / 2 < 0.14
