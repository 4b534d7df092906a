"""The images the diffusion model learns from: MNIST (default), Fashion-MNIST, CIFAR-10, or a
synthetic stand-in.

    images, labels, used_name = load("mnist", data_dir="data", train=True)
    images = load_images(1, "mnist", data_dir="data")      # only the first image(s), no labels

`images` is float32 (N, C, H, W) scaled to [-1, 1]: pixel value v in 0..255 becomes v / 127.5 - 1,
so the black background is -1 and full ink is +1. The DDPM forward process (Ho et al. 2020, eq. 4)
shrinks x_0 towards 0 and adds unit-variance noise, so the data should be centred on 0 with a
range comparable to the noise; [-1, 1] is the range the paper uses (section 3.3). `labels` is
int64 (N,) with values 0..9 (NUM_CLASSES = 10 classes in every dataset here).

Where the files are looked for, in this order (the first folder holding every file wins):
    data_dir/<name>/      e.g. data/mnist/         (where downloads go)
    torchvision's layout  data/MNIST/raw/, data/FashionMNIST/raw/, data/cifar-10-batches-py/
    data_dir itself       e.g. --data-dir ~/Downloads/mnist
(MNIST and Fashion-MNIST files share their names, so a folder of bare files is read as the
dataset you name.) MNIST-style files may be gzipped or not. Missing files are downloaded from the
public mirrors in MIRRORS, checked against the canonical MD5 sums in MD5, and written atomically
(a temporary file, then a rename), so an interrupted download never leaves half a file behind.
Local files are checked by their structure (magic number, header, size, shape), not by MD5,
because a re-compressed copy has different bytes but the same data.

The files: MNIST and Fashion-MNIST are the four IDX files train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte; CIFAR-10 is data_batch_1
... data_batch_5 and test_batch, or the tarball cifar-10-python.tar.gz itself, which is read without
being extracted (one file to keep, not a second copy of 180 MB that could drift from it). A download
fetches only the split a run needs, with a progress line: MNIST about 11 MB, Fashion-MNIST 30 MB,
CIFAR-10 170 MB; a failed or damaged download leaves nothing behind, and the next mirror is tried.
Nothing else is cached: decoding MNIST from its .gz files takes about a second. The structure
checks: the IDX magic number (2051 for images, 2049 for labels), the header's sizes against the
file's length, 28 x 28 images, labels 0-9, as many labels as images. A file that fails one stops the
run with one line naming the file and the fix (delete it and let it download again, or copy a good
one), exit status 2.

On a machine without internet: copy the four MNIST files into data/mnist/, or point --data-dir at
the folder that holds them (if torchvision downloaded MNIST to ~/datasets/MNIST/raw/, --data-dir
~/datasets finds it). To fetch them once on a machine with internet (this fills data/mnist/):

    python -c "import data; data.load('mnist'); data.load('mnist', train=False)"

With no data and no internet, load(..., fallback=True) returns digits rendered from matplotlib's
bundled fonts (`synthetic_digits`: DejaVu, STIX and Computer Modern, plain, bold and slanted, each
randomly rotated, scaled, slanted, shifted, warped and given an MNIST-like pen width; labelled and
reproducible), prints a loud warning, once, that they are not MNIST and how to get MNIST, and
reports the dataset it used as "synthetic-digits". Samples and scores from them are not comparable
with MNIST results. part2_diffusion.py falls back only when no --dataset was named; a named dataset
that cannot be had stops the run with one line saying where it looked and what to copy where.

Next: metrics.py
"""
import functools
import gzip
import hashlib
import http.client
import io
import pickle
import struct
import sys
import tarfile
import urllib.request
import zlib
from math import prod, radians
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from outputs import UserError, atomic_write

DATASETS = ("mnist", "fashion-mnist", "cifar10")
# Every dataset here has ten classes: the digits 0-9, Fashion-MNIST's ten kinds of garment,
# CIFAR-10's ten object classes. A conditional U-Net gets num_classes=NUM_CLASSES.
NUM_CLASSES = 10

# Public mirrors, tried in order. Tests point these at a local file:// folder.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# Canonical MD5 of each downloadable file (the values torchvision checks, for the same files).
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}

TORCHVISION_DIR = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
                   "cifar10": "cifar-10-batches-py"}
# (images, labels) file names of each split: train=True holds 60000 images, train=False 10000.
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_MAGIC = {2049: "labels", 2051: "images"}  # 0x0801 / 0x0803: unsigned bytes, 1 or 3 dimensions
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_BATCHES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}
FIX = ("delete it and run again to download a fresh copy, or copy a good one in "
       "(README, section Data)")


class DataError(UserError):
    """Missing or corrupt data. The message is one line naming the file (or dataset) and the fix."""


# --------------------------------------------------------------------------------------------------
# Reading and checking local files

def read_idx(path):
    """Read an IDX file (gzipped or not) of uint8 images (N, rows, cols) or labels (N,), checking
    its structure.

    Layout: a 4-byte big-endian magic number (2051 images, 2049 labels; its last byte is the number
    of dimensions), one 4-byte big-endian size per dimension, then exactly prod(sizes) bytes of
    data.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's own magic: decompress whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # truncated gzip: EOFError; damaged: OSError
        raise DataError(f"{path}: cannot be read or decompressed ({e}); {FIX}") from None
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or magic not in IDX_MAGIC:
        raise DataError(f"{path}: bad magic number {magic} (an IDX file of uint8 labels or images "
                        f"starts with 2049 or 2051); {FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the header is cut short ({len(raw)} bytes); {FIX}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != prod(dims):
        raise DataError(f"{path}: the header announces {IDX_MAGIC[magic]} of shape {dims} "
                        f"({prod(dims)} bytes) but {len(raw) - header} bytes follow; {FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _to_tensors(images, labels):
    """uint8 images (N, C, H, W) -> float32 in [-1, 1]; labels -> int64 (N,)."""
    return _to_images(images), torch.from_numpy(labels.astype(np.int64))


def _to_images(images):
    """uint8 images (N, C, H, W) -> float32 in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)


def _check_labels(labels, n_images, where):
    if labels.ndim != 1 or len(labels) != n_images:
        raise DataError(f"{where}: {n_images} images but {len(labels)} labels; one file is "
                        f"truncated or from another set; {FIX}")
    top = NUM_CLASSES - 1
    in_range = len(labels) == 0 or 0 <= labels.min() <= labels.max() <= top
    if labels.dtype.kind not in "iu" or not in_range:
        raise DataError(f"{where}: labels must be integers 0..{top}; {FIX}")


def _check_images(images, image_path):
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: holds an array of shape {images.shape}, "
                        f"expected (N, 28, 28); {FIX}")


def _read_idx_pair(files):
    """(images file, labels file) -> images (N, 1, 28, 28) in [-1, 1], labels (N,)."""
    image_path, label_path = files
    images, labels = read_idx(image_path), read_idx(label_path)
    _check_images(images, image_path)
    if labels.ndim != 1:
        raise DataError(f"{label_path}: holds an array of shape {labels.shape}, "
                        f"expected labels (N,); {FIX}")
    _check_labels(labels, len(images), f"{image_path} and {label_path}")
    return _to_tensors(images[:, None], labels)


class _ArraysOnly(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only. A pickle may name any function to call while
    it loads, so a doctored file could run code; a CIFAR-10 batch needs nothing beyond the names
    below."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(raw, where):
    """A pickled CIFAR-10 batch, {'data': uint8 (n, 3072), 'labels': [n ints]} ->
    (n, 3, 32, 32), (n,)."""
    try:
        # latin1: the batches were pickled by Python 2, whose byte strings must map 1:1 onto bytes.
        batch = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
        data, labels = batch["data"], np.asarray(batch["labels"])
    except Exception as e:
        # any failure to unpickle means a damaged or foreign file, whatever its kind
        raise DataError(f"{where}: not a CIFAR-10 batch ({type(e).__name__}: {e}); {FIX}") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DataError(f"{where}: 'data' is not uint8 of shape (n, 3072 = 3 x 32 x 32); {FIX}")
    _check_labels(labels, len(data), where)
    # each row stores the red plane, then green, then blue
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(source, train):
    """A cifar-10-batches-py folder, or the tarball read in place -> images (N, 3, 32, 32),
    labels (N,)."""
    names = CIFAR_BATCHES[train]
    try:
        if source.is_dir():
            raws = {name: (source / name).read_bytes() for name in names}
        else:  # straight from the tarball: no second 180 MB copy on disk to keep in step with it
            with tarfile.open(source, "r:gz") as tar:
                raws = {Path(m.name).name: tar.extractfile(m).read() for m in tar
                        if m.isfile() and Path(m.name).name in names}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source}: cannot be read ({e}); {FIX}") from None
    if not source.is_dir():
        missing = [name for name in names if name not in raws]
        if missing:
            raise DataError(f"{source}: the archive lacks {', '.join(missing)}; {FIX}")
    batches = [_cifar_batch(raws[name], source / name if source.is_dir() else f"{source}:{name}")
               for name in names]
    return _to_tensors(np.concatenate([b[0] for b in batches]),
                       np.concatenate([b[1] for b in batches]))


def _search_dirs(name, data_dir):
    d = Path(data_dir)
    return [d / name, d / TORCHVISION_DIR[name], d]


def _find(name, data_dir, train):
    """Where this split is on disk, or None: (images, labels) paths for IDX; a folder or the
    tarball for CIFAR."""
    for folder in _search_dirs(name, data_dir):
        if name == "cifar10":
            if all((folder / b).is_file() for b in CIFAR_BATCHES[train]):
                return folder
            if (folder / CIFAR_TAR).is_file():
                return folder / CIFAR_TAR
            continue
        # Prefer the uncompressed file when both exist (torchvision keeps both): nothing to
        # decompress then.
        found = [next((p for p in (folder / f, folder / f"{f}.gz") if p.is_file()), None)
                 for f in IDX_FILES[train]]
        if all(found):
            return tuple(found)
    return None


# --------------------------------------------------------------------------------------------------
# Downloading

def _download(url, dest, md5):
    """Fetch `url` into `dest` through a temporary file, with a progress line; DataError if the MD5
    differs."""
    def write(tmp):
        digest, done = hashlib.md5(), 0
        print(f"downloading {url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0)
                while chunk := response.read(1 << 18):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    of_total = (f" of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)" if total
                                else " MB")
                    print(f"\r  {done / 1e6:.1f}{of_total}", end="", file=sys.stderr, flush=True)
        finally:
            if done:
                print(file=sys.stderr)  # end the progress line
        if digest.hexdigest() != md5:
            raise DataError(f"MD5 {digest.hexdigest()} differs from the canonical {md5}")
    atomic_write(dest, write)


def _fetch(name, data_dir, train):
    """Download what this split lacks into data_dir/<name>/, trying each mirror in turn; None if
    all fail."""
    folder = Path(data_dir) / name
    wanted = (CIFAR_TAR,) if name == "cifar10" else [f"{f}.gz" for f in IDX_FILES[train]]
    for filename in wanted:
        if (folder / filename).is_file() or (folder / filename.removesuffix(".gz")).is_file():
            continue  # a previous run already fetched it
        for mirror in MIRRORS[name]:
            try:
                _download(mirror + filename, folder / filename, MD5[name][filename])
                break
            except (OSError, http.client.HTTPException, DataError) as e:
                # URLError and timeouts are OSErrors
                print(f"  failed: {e}", file=sys.stderr)
        else:
            return None
    return _find(name, data_dir, train)


# --------------------------------------------------------------------------------------------------
# The offline stand-in: digits drawn with matplotlib's fonts, jittered to look hand-written

# Fonts shipped inside matplotlib (so always present), chosen for MNIST-like digit shapes: plain,
# bold and slanted faces of four families. Left out: the monospaced faces (dotted zero), old-style
# cmmi10 digits.
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
         "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
         "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
         "cmr10", "cmb10", "cmss10", "cmti10")
# Each glyph is also stored eroded once and dilated once or twice (3x3, at 2x size).
STROKE_STEPS = (-1, 0, 1, 2)


def stroke_width(x):
    """Mean stroke width in pixels of ink images x (..., H, W) in [0, 1]: 2 * ink area / outline
    length.

    A stroke of width w and length L has area w * L and an outline of about 2 * L; the outline
    length of a soft-edged image is its total variation. MNIST test digits measure 2.1 on average,
    1.5 to 2.8 for 80% of them.
    """
    outline = x.diff(dim=-1).abs().sum((-2, -1)) + x.diff(dim=-2).abs().sum((-2, -1))
    return 2 * x.sum((-2, -1)) / outline.clamp(min=1e-6)


@functools.lru_cache  # once per process and size; callers only read the result
def _glyphs(size):
    """Every digit in every font and stroke step, rendered at twice the final size.

    Returns glyphs (len(FONTS), NUM_CLASSES, len(STROKE_STEPS), 2*size, 2*size) in [0, 1] and their
    stroke widths measured at the final size (len(FONTS), NUM_CLASSES, len(STROKE_STEPS)). Like
    MNIST, the ink is fitted into a box of 20/28 of the image, keeping its aspect ratio, with its
    centre of mass at the centre.
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font
    side = 2 * size
    box = round(side * 20 / 28)
    plain = torch.zeros(len(FONTS), NUM_CLASSES, side, side)
    for i, font_name in enumerate(FONTS):
        font = FT2Font(str(Path(matplotlib.get_data_path(), "fonts", "ttf", f"{font_name}.ttf")))
        # at 72 dpi one point is one pixel: the glyph is drawn about 3x too big
        font.set_size(4 * box, 72)
        for digit in range(NUM_CLASSES):
            font.set_text(str(digit))
            font.draw_glyphs_to_bitmap(antialiased=True)
            ink = torch.from_numpy(np.asarray(font.get_image(), dtype=np.float32) / 255)
            rows, cols = ink.sum(1).nonzero()[:, 0], ink.sum(0).nonzero()[:, 0]
            ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # crop to the ink
            h, w = (max(1, round(s * box / max(ink.shape))) for s in ink.shape)
            ink = F.interpolate(ink[None, None], size=(h, w), mode="bilinear", antialias=True)[0, 0]
            cy = (ink.sum(1) * torch.arange(h)).sum() / ink.sum()
            cx = (ink.sum(0) * torch.arange(w)).sum() / ink.sum()
            top = min(max(round((side - 1) / 2 - cy.item()), 0), side - h)
            left = min(max(round((side - 1) / 2 - cx.item()), 0), side - w)
            plain[i, digit, top:top + h, left:left + w] = ink
    steps = []
    for step in STROKE_STEPS:
        x = plain
        for _ in range(abs(step)):  # dilation = 3x3 max; erosion = 3x3 min = -max(-x)
            x = F.max_pool2d(x, 3, 1, 1) if step > 0 else -F.max_pool2d(-x, 3, 1, 1)
        steps.append(x)
    glyphs = torch.stack(steps, dim=2)
    return glyphs, stroke_width(glyphs) / 2


def synthetic_digits(n, seed=0, size=28):
    """n labelled digit images, (n, 1, size, size) float32 in [-1, 1] and (n,) int64, deterministic
    per seed.

    Each image is one font's glyph, at the stroke step closest to a random MNIST-like pen width,
    under a random affine map (rotation up to 15 degrees, scale, slant, shift up to 2 pixels) and a
    smooth random warp (the wobble of a hand-drawn stroke).
    """
    if n < 1:
        raise ValueError(f"n = {n}: need at least one image")
    glyphs, widths = _glyphs(size)
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    # Every random number is drawn here, up front, so the result does not depend on the chunking
    # below.
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    font = torch.randint(0, len(FONTS), (n,), generator=g)
    pen = uniform(1.5, 2.8)                               # target stroke width, pixels
    step = (widths[font, labels] - pen[:, None]).abs().argmin(1)
    angle = uniform(-radians(15), radians(15))
    scale_y = uniform(0.85, 1.15)
    scale_x = scale_y * uniform(0.75, 1.15)               # narrower or wider than the font drew it
    slant = uniform(-0.3, 0.3)
    shift = uniform(-2 / (size / 2), 2 / (size / 2), 2)   # grid units: the image spans [-1, 1]
    # a coarse 4x4 field of small displacements
    wobble = 0.03 * torch.randn(n, 2, 4, 4, generator=g)
    coefficients, basis = _grid_factors(angle, scale_x, scale_y, slant, shift, wobble, size)

    flat = glyphs.flatten(0, 2)  # (fonts * NUM_CLASSES * steps, 2 size, 2 size)
    which = (font * NUM_CLASSES + labels) * len(STROKE_STEPS) + step
    images = torch.empty(n, 1, size, size)
    for s in range(0, n, 2048):  # in chunks, to bound memory
        e = min(s + 2048, n)
        grid = (coefficients[s:e] @ basis).reshape(e - s, 2, size, size).permute(0, 2, 3, 1)
        src = flat.index_select(0, which[s:e])[:, None]
        # Sampling the 2x glyph at the output pixel centres averages 2x2 source pixels: an
        # anti-aliased shrink.
        x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        images[s:e] = x.clamp(0, 1) * 2 - 1
    return images, labels


def _grid_factors(angle, scale_x, scale_y, slant, shift, wobble, size):
    """The sampling grids of synthetic_digits as one product: coefficients (n, 2, 19) @ basis
    (19, size * size).

    The sampling grid says, for each output pixel, where to read the glyph (grid_sample's
    convention, with the image spanning [-1, 1]). It is linear in the affine parameters and in the
    4x4 warp, so one matrix product builds it for every image.
    """
    n = len(angle)
    cos, sin = angle.cos(), angle.sin()
    # rotate . slant . 1/scale, then shift
    theta = torch.stack([cos / scale_x, (cos * slant - sin) / scale_y, shift[:, 0],
                         sin / scale_x, (sin * slant + cos) / scale_y, shift[:, 1]],
                        dim=1).reshape(n, 2, 3)
    coefficients = torch.cat([theta, wobble.flatten(2)], dim=2)
    identity = torch.eye(2, 3)[None]
    xy1 = F.affine_grid(identity, [1, 1, size, size], align_corners=False).reshape(-1, 2)
    # each of the 16 warp values, spread smoothly over the image
    smooth = F.interpolate(torch.eye(16).reshape(16, 1, 4, 4), size=(size, size), mode="bicubic",
                           align_corners=True)
    # rows: x, y, 1, 16 warp bumps
    basis = torch.cat([xy1.T, torch.ones(1, size * size), smooth.reshape(16, -1)])
    return coefficients, basis


# --------------------------------------------------------------------------------------------------
# The entry points

_warned_synthetic = False  # say it once per process, however many times load() falls back


def _warn_synthetic(data_dir, why):
    global _warned_synthetic
    if _warned_synthetic:
        return
    _warned_synthetic = True
    files = " ".join(f"{f}.gz" for pair in IDX_FILES.values() for f in pair)
    bar = "=" * 100
    print(f"{bar}\nWARNING: MNIST is not in {data_dir}/ and {why}.\n"
          f"Using SYNTHETIC DIGITS rendered from matplotlib's fonts instead. THIS IS NOT MNIST:\n"
          f"samples and scores are not comparable with MNIST results.\n"
          f"To get MNIST: run once with internet access, or copy the four files\n  {files}\n"
          f"into {Path(data_dir) / 'mnist'}/ or point --data-dir at the folder holding them "
          f"(README, section Data).\n{bar}", file=sys.stderr)


def _locate(name, data_dir, train, download):
    """(where the split is: _find's answer, or None; why it is not there, for the messages)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    source = _find(name, data_dir, train)
    why = "downloading is switched off"
    if source is None and download:
        source = _fetch(name, data_dir, train)
        why = "the download failed"
    return source, why


def _not_found(name, data_dir, train, why):
    """The DataError for a split neither on disk nor downloadable: where we looked, and the fix."""
    files = ", ".join(f"{f}.gz" for f in IDX_FILES[train]) if name != "cifar10" else CIFAR_TAR
    looked = ", ".join(str(p) for p in _search_dirs(name, data_dir))
    return DataError(f"{name} not found (looked in {looked}) and {why}; copy {files} into "
                     f"{Path(data_dir) / name}/ or run with internet access (README, section Data)")


def _check_not_empty(images, name, source):
    if len(images) == 0:  # well-formed, but nothing to learn from or to draw a batch from
        where = source if name == "cifar10" else source[0]
        raise DataError(f"{where}: holds 0 images; {FIX}")


def load(name="mnist", data_dir="data", train=True, download=True, fallback=False):
    """Load a dataset: (images (N, C, H, W) float32 in [-1, 1], labels (N,) int64, used_name).

    MNIST and Fashion-MNIST: (N, 1, 28, 28), N = 60000 (train) or 10000 (test). CIFAR-10:
    (N, 3, 32, 32), N = 50000 or 10000. When the files are neither on disk nor downloadable,
    fallback=True (MNIST only) returns synthetic_digits with used_name "synthetic-digits";
    otherwise DataError says what is missing and the fix.
    """
    source, why = _locate(name, data_dir, train, download)
    if source is not None:
        images, labels = _read_cifar(source, train) if name == "cifar10" else _read_idx_pair(source)
        _check_not_empty(images, name, source)
        return images, labels, name
    if fallback and name == "mnist":
        _warn_synthetic(data_dir, why)
        images, labels = synthetic_digits(60000 if train else 10000, seed=0 if train else 1)
        return images, labels, "synthetic-digits"
    raise _not_found(name, data_dir, train, why)


def load_images(n, name="mnist", data_dir="data", train=True, download=True):
    """The first n images of a dataset's split (all of them if it holds fewer), without labels:
    (n, C, H, W) float32 in [-1, 1], the same as load(...)[0][:n], e.g. one real digit for a figure.

    Looks for the files, downloads them and checks them as load() does (DataError when they are
    missing or damaged; no synthetic fallback), but converts only the n images it returns.
    """
    if n < 1:
        raise ValueError(f"n = {n}: need at least one image")
    source, why = _locate(name, data_dir, train, download)
    if source is None:
        raise _not_found(name, data_dir, train, why)
    if name == "cifar10":
        images = _read_cifar(source, train)[0][:n].clone()
    else:
        images = read_idx(source[0])
        _check_images(images, source[0])
        images = _to_images(images[:n, None])
    _check_not_empty(images, name, source)
    return images
