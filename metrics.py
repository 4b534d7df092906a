"""Sample quality, measured: Frechet distance, precision and recall, and class coverage.

    python metrics.py runs/<name>/samples.npy  # the scores for a set of generated digits
    python metrics.py --calibrate              # the same scores for real, noisy, blurred
                                               # and noise images

FID (Heusel et al. 2017) compares two sets of images through the features of a network trained on
real images: usually Inception-v3, a 100 MB download that has never seen a handwritten digit. Here a
small CNN is trained on MNIST instead (once, a minute or two on a CPU, seeded), cached next to the
data, and its penultimate layer plays Inception's part. Our FIDs are therefore comparable with each
other, at the same N, and NOT with the FIDs printed in papers. `metrics.py --calibrate` shows what a
value means: the same scores for real, noisy, blurred and pure-noise images.

The scores, for N generated images against the 10,000 real MNIST test digits:
    FID         Frechet distance between Gaussians fitted to the two sets of features. 0 for
                identical distributions; biased upward for small N, so compare values at the same
                N only.
    precision   the fraction of generated images that land on the real images' manifold (are they
                good?)
    recall      the fraction of real images that land on the generated images' manifold (is
                everything there?). Both from Kynkaanniemi et al. 2019, with k = 3 nearest
                neighbours. In this feature space precision cannot tell weak images from good ones
                (the calibration shows pure noise at 0.99): read it next to FID and recall, never
                alone.
    KL          KL(histogram of predicted classes || uniform), in nats: 0 when the ten digits
                appear equally often, log 10 = 2.30 when every sample is the same digit (mode
                collapse).
    confidence  the classifier's mean top-class probability: how clearly each sample is *some*
                digit.

The classifier (make_classifier: two 3x3 conv layers, 16 and 32 channels, then 128 features and 10
classes) learns from MNIST's train[:50000] (3 epochs, seed 0) and is cached as
<data-dir>/mnist-classifier.pt. train[50000:] is held out: real digits that neither the classifier
nor the FID reference has seen give the floor, which is not 0 (about 5.7 at N = 1000, mostly
finite-N bias). The Part 2 bar: at N = 1000, FID at most half that of 3x3-blurred test digits (112
with the seed-0 classifier; --calibrate recomputes it for yours), with all 10 classes present. The
scores belong to the classifier file: compare them only under the same one.

Samples are a .npy array: float (N, 1, 28, 28) or (N, 28, 28) in [-1, 1], as part2_diffusion.py
writes them, or uint8 in 0..255. Bad input (wrong shape or range, NaN, fewer than 4 samples, no
classifier and no MNIST to train one) stops with one line and exit status 2. From Python:
load_or_train_classifier(data_dir, path) returns (classifier, info), and evaluate(samples,
classifier, test_images) a dict of every score; part2_diffusion.py uses them to score a run when
the classifier is cached.

Next: Part 3 begins with captions.py, the prompts.
"""
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from outputs import UserError, arg_parser, check_output_file, check_space, check_writable, \
    run_main, save_bytes, save_json

# The classifier learns from train[:50000]; train[50000:] is held out (the classic 50k/10k split),
# so the calibration's "real" row uses digits that neither the classifier nor the FID reference has
# seen.
N_CLASSIFIER_TRAIN = 50_000
EPOCHS = 3
BATCH = 64
MAX_LR = 3e-3         # peak of the one-cycle learning rate (Smith 2018): about 99% in three epochs
SEED = 0
K = 3                 # nearest neighbours for precision and recall, as in Kynkaanniemi et al.
N_CALIBRATION = 1000  # the N of the calibration table (--calibrate) and of the Part 2 quality bar
CLASSIFIER_FILE = "mnist-classifier.pt"


# --- the classifier whose features we measure in --------------------------------------------------

def make_classifier():
    """A small CNN: (N, 1, 28, 28) digits in [-1, 1] -> (N, 10) logits.

    classifier[:-1] stops one layer early and gives the (N, 128) features that FID and
    precision/recall are computed on (Inception's pool features play the same part in the usual
    FID)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (N, 16, 14, 14)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 32, 7, 7)
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),           # (N, 128): the features
        nn.Linear(128, 10),                                            # (N, 10): class logits
    )


def train_classifier(images, labels, epochs=EPOCHS, seed=SEED, log=print):
    """Cross-entropy, Adam with a one-cycle learning rate, minibatches of BATCH. Returns the model.

    images: (N, 1, 28, 28) float32 in [-1, 1]; labels: (N,) int64 in 0..9."""
    images, labels = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels)
    torch.manual_seed(seed)
    model = make_classifier()
    opt = torch.optim.Adam(model.parameters())
    steps_per_epoch = math.ceil(len(images) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR,
                                                total_steps=epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(images), generator=shuffle).split(BATCH):
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"  classifier epoch {epoch + 1}/{epochs}: mean loss {total / steps_per_epoch:.4f} "
            f"({time.time() - start:.0f} s)")
    return model.eval()


@torch.no_grad()
def _forward(net, images, batch=1000):
    """Run `net` over (N, 1, 28, 28) images in chunks; return a float64 tensor."""
    net.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    return torch.cat([net(chunk) for chunk in x.split(batch)]).double()


def features(classifier, images):
    """(N, 1, 28, 28) images in [-1, 1] -> (N, 128) float64 penultimate-layer features."""
    return _forward(classifier[:-1], images).numpy()


def predict(classifier, images):
    """(N, 1, 28, 28) images in [-1, 1] -> (N, 10) float64 class probabilities."""
    return _forward(classifier, images).softmax(dim=1).numpy()


def accuracy(classifier, images, labels):
    """Fraction of images whose most probable class is the label."""
    return float((predict(classifier, images).argmax(1) == np.asarray(labels)).mean())


def load_mnist(data_dir, train, need="the metrics need real MNIST"):
    """Real MNIST from data.py, or a UserError saying what needed it and where it was looked for.
    Never the synthetic fallback digits: a yardstick made of them would measure the wrong thing."""
    try:
        images, labels, _ = data.load("mnist", data_dir, train=train, download=False,
                                      fallback=False)
    except data.DataError as e:
        raise UserError(f"{need}: {e}") from None
    return torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels)


def load_or_train_classifier(data_dir="data", path=None, log=print):
    """The cached classifier at `path` (default <data_dir>/mnist-classifier.pt), trained and saved
    first if it is missing. Returns (model, info); info records what it was trained on and its test
    accuracy."""
    path = Path(path) if path else Path(data_dir) / CLASSIFIER_FILE
    if path.exists():
        try:
            info = torch.load(path, weights_only=True)
            if not isinstance(info, dict):
                raise TypeError(f"it holds a {type(info).__name__}, not a dict")
            model = make_classifier()
            model.load_state_dict(info.pop("state_dict"))
            log(f"classifier: {path} (trained on {info['trained_on']}; "
                f"test accuracy {info['test_accuracy']:.2%} on {info['n_test']} digits)")
        except (OSError, EOFError, RuntimeError, KeyError, AttributeError, TypeError, ValueError,
                pickle.UnpicklingError) as e:
            reason = " ".join(str(e).split())[:120]
            raise UserError(f"{path} is not a classifier saved by metrics.py ({reason}); "
                            f"delete it to train a new one") from None
        return model.eval(), info
    check_writable(Path(path).parent, "--classifier PATH")     # before training, not after
    check_space(Path(path).parent, 2, "the classifier's cache")
    need = f"no classifier at {path}, and training one needs real MNIST"
    train_x, train_y = load_mnist(data_dir, train=True, need=need)
    test_x, test_y = load_mnist(data_dir, train=False, need=need)
    n = min(N_CLASSIFIER_TRAIN, len(train_x))
    log(f"no classifier at {path}: training one on MNIST train[:{n}] "
        f"({EPOCHS} epochs, seed {SEED})")
    model = train_classifier(train_x[:n], train_y[:n], log=log)
    info = {"trained_on": f"MNIST train[:{n}] from {data_dir}, {EPOCHS} epochs, seed {SEED}",
            "n_train": n, "test_accuracy": accuracy(model, test_x, test_y), "n_test": len(test_x)}
    save_bytes(path, lambda f: torch.save({"state_dict": model.state_dict(), **info}, f))
    log(f"classifier test accuracy: {info['test_accuracy']:.2%} on {info['n_test']} MNIST test "
        f"digits; saved to {path}")
    return model, info


# --- the scores -----------------------------------------------------------------------------------

def gaussian_fit(feats):
    """(N, D) features -> mean (D,) and covariance (D, D), float64 (the unbiased 1/(N-1)
    estimate)."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need an (N, D) array with N >= 2 to fit a Gaussian; "
                         f"got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrtm_psd(c):
    """Square root of a symmetric positive semi-definite matrix, by eigendecomposition:
    V sqrt(W) V^T. Eigenvalues a hair below zero (round-off in a singular covariance) are set to
    zero."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), in float64:

        d^2 = |mu1 - mu2|^2 + Tr(C1) + Tr(C2) - 2 Tr((C1 C2)^(1/2))        (Dowson & Landau 1982)

    C1 C2 is not symmetric, but with S = C1^(1/2) it has the same eigenvalues as S C2 S, which is
    symmetric and positive semi-definite (AB and BA share their eigenvalues; take A = S, B = S C2).
    So Tr((C1 C2)^(1/2)) = sum_i sqrt(lambda_i(S C2 S)), and both steps use eigh: real, stable, no
    scipy. This is the number called FID when the features are a classifier's."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"need means of shape (D,) and covariances (D, D); "
                         f"got {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    s1 = _sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def _distances(a, b):
    """(n, D), (m, D) -> (n, m) Euclidean distances, from the differences themselves (the shortcut
    |a|^2 + |b|^2 - 2 a.b loses precision exactly where it matters: between near neighbours)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(points, k, chunk=1000):
    """(n, D) -> (n,): the distance from each point to its k-th nearest neighbour in the same set.
    Each point is its own nearest neighbour (distance 0), hence the (k + 1)-th smallest distance."""
    return torch.cat([_distances(c, points).kthvalue(k + 1, dim=1).values
                      for c in points.split(chunk)])


def _fraction_inside(queries, centres, radii, chunk=1000):
    """Fraction of `queries` that lie in at least one ball B(centres[j], radii[j])."""
    inside = [(_distances(c, centres) <= radii).any(dim=1) for c in queries.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_feats, fake_feats, k=K):
    """Improved precision and recall (Kynkaanniemi et al. 2019), in feature space.

    Each set's manifold is estimated as the union of balls around its points, each ball reaching the
    point's k-th nearest neighbour. precision = fraction of fake points inside the real manifold;
    recall = fraction of real points inside the fake manifold. Both lie in [0, 1]."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} points in each "
                         f"set; got {len(real)} real and {len(fake)} generated")
    precision = _fraction_inside(fake, real, _knn_radii(real, k))
    recall = _fraction_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


def kl_from_uniform(counts):
    """KL(p || uniform) in nats for a histogram of counts: log(C) - entropy(p), with 0 log 0 = 0."""
    p = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    p = p[p > 0]
    return float((p * np.log(p * len(counts))).sum())


def as_images(samples):
    """Samples -> float32 tensor (N, 1, 28, 28) in [-1, 1], or a ValueError saying what is wrong.

    Accepted: (N, 1, 28, 28) or (N, 28, 28); float in [-1, 1] (what part2_diffusion.py writes), or
    uint8 in 0..255. Values within 1e-3 outside [-1, 1] are round-off and are clipped."""
    x = samples.detach().cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples)
    shape = x.shape
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"samples have shape {shape}; "
                         f"expected (N, 1, 28, 28) or (N, 28, 28) digits")
    if len(x) == 0:
        raise ValueError("there are no samples (N = 0)")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples have dtype {x.dtype}; "
                         f"expected floats in [-1, 1] or uint8 in 0..255")
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or infinity")
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(f"samples range from {x.min():.4g} to {x.max():.4g}; "
                         f"floats must lie in [-1, 1] (uint8 images in 0..255 are accepted too)")
    return torch.from_numpy(np.clip(x, -1, 1).astype(np.float32))


def evaluate(samples, classifier, real_test_images, k=K, seed=SEED):
    """Every score for N samples against the real test images. Returns a JSON-ready dict.

    samples: any format `as_images` accepts; real_test_images: (M, 1, 28, 28) in [-1, 1], M = 10000
    for MNIST. FID uses all M as the reference. Precision and recall use N of them (a seeded draw):
    k-NN balls shrink as a set grows, so sets of unequal size would skew both numbers."""
    return scores(classifier, as_images(samples), features(classifier, real_test_images), k, seed)


def cached_classifier(data_dir, why="no accuracy"):
    """The classifier if it is cached in data_dir (a run never trains it), else None; a damaged
    cache says so in a line, and the run goes on (its samples are saved: score them later)."""
    if not (Path(data_dir) / CLASSIFIER_FILE).exists():
        return None
    try:
        return load_or_train_classifier(data_dir, log=lambda *_: None)[0]
    except UserError as e:
        print(f"{why}: {e}", file=sys.stderr)
        return None


def score_if_cached(samples, dataset, data_dir):
    """evaluate() for MNIST samples (n, 1, 28, 28) after a run, if the classifier is cached."""
    if dataset != "mnist" or len(samples) <= K:
        return None
    classifier = cached_classifier(data_dir, "no metrics")
    try:
        real_test = classifier and load_mnist(data_dir, train=False)[0]
    except UserError as e:  # no test set: the samples are saved; score them later
        print(f"no metrics: {e}", file=sys.stderr)
        return None
    return classifier and evaluate(samples, classifier, real_test)


def scores(classifier, images, real_feats, k=K, seed=SEED):
    """evaluate(), given the (M, D) features of the real test images (calibration reuses them)."""
    if len(images) <= k:
        raise ValueError(f"need more than {k} samples for precision and recall (k = {k}); "
                         f"got {len(images)}")
    fake_feats, probs = features(classifier, images), predict(classifier, images)
    pick = np.random.default_rng(seed).permutation(len(real_feats))[:len(images)]
    precision, recall = precision_recall(real_feats[pick], fake_feats, k)
    hist = np.bincount(probs.argmax(axis=1), minlength=10)
    fid = frechet_distance(*gaussian_fit(real_feats), *gaussian_fit(fake_feats))
    return {"n": len(images), "n_reference": len(real_feats), "fid": fid, "precision": precision,
            "recall": recall, "k": k, "n_real_pr": len(pick), "class_histogram": hist.tolist(),
            "classes_present": int((hist > 0).sum()), "kl_uniform": kl_from_uniform(hist),
            "confidence": float(probs.max(axis=1).mean())}


# --- calibration: what the numbers mean -----------------------------------------------------------

def box_blur(images):
    """3x3 box blur: each pixel becomes the mean of its 3x3 neighbourhood; the border is padded with
    -1 (MNIST's black background), so blurring does not brighten the edges. (N, 1, H, W) -> same."""
    return F.avg_pool2d(F.pad(images, (1, 1, 1, 1), value=-1.0), kernel_size=3, stride=1)


def calibration_sets(train_x, train_y, test_x, n=N_CALIBRATION, seed=SEED):
    """(name, images) pairs of n images each, from best to worst, to read the scores against."""
    gen = torch.Generator().manual_seed(seed)
    held_x, held_y = train_x[N_CLASSIFIER_TRAIN:], train_y[N_CLASSIFIER_TRAIN:]
    if (held_y < 5).sum() < n:
        raise UserError(f"calibration at N = {n} needs the full MNIST training set "
                        f"(images after the first {N_CLASSIFIER_TRAIN} are held out for it)")

    def draw(pool):
        return pool[torch.randperm(len(pool), generator=gen)[:n]]

    held, test = draw(held_x), draw(test_x)
    noise = torch.randn(held.shape, generator=gen)
    return [
        ("real held-out digits (floor)", held),
        ("real test digits (in the reference)", test),
        ("held-out + noise, sigma 0.1", (held + 0.1 * noise).clamp(-1, 1)),
        ("held-out + noise, sigma 0.3", (held + 0.3 * noise).clamp(-1, 1)),
        ("3x3 box blur of test digits (bar)", box_blur(test)),
        ("held-out digits 0-4 only", draw(held_x[held_y < 5])),
        ("pure noise N(0,1) clipped", torch.randn(held.shape, generator=gen).clamp(-1, 1)),
    ]


def calibrate(classifier, train_x, train_y, test_x, n=N_CALIBRATION):
    """[(name, scores)] for each calibration set, against test_x as the reference."""
    real_feats = features(classifier, test_x)
    return [(name, scores(classifier, images, real_feats))
            for name, images in calibration_sets(train_x, train_y, test_x, n)]


def format_table(rows):
    """[(name, scores)] -> the table the CLI prints."""
    head = (f"{'':36s} {'N':>5s} {'FID':>8s} {'prec.':>6s} {'recall':>6s} {'KL(U)':>6s} "
            f"{'class':>5s} {'conf.':>6s}")
    lines = [head]
    for name, f in rows:
        lines.append(f"{name:36s} {f['n']:5d} {f['fid']:8.2f} {f['precision']:6.3f} "
                     f"{f['recall']:6.3f} {f['kl_uniform']:6.3f} {f['classes_present']:5d} "
                     f"{f['confidence']:6.3f}")
    return "\n".join(lines)


def load_samples(path):
    """Read a .npy file of samples (see as_images for the formats), or raise a one-line
    UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes)")
    try:  # mapped first: a header that claims more images than the file holds fails here, unread
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path} is not an array saved by np.save (a .npy file), or is cut short")\
            from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path} holds several arrays (.npz); save the samples alone with np.save")
    array = np.array(array)
    try:
        images = as_images(array)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0:
        # Digits in [-1, 1] always have black (-1) background pixels; none at all means [0, 1]
        # images.
        raise UserError(f"{path} looks like images in [0, 1]; "
                        f"the lab's images are in [-1, 1] (save 2 * x - 1)")
    if len(images) <= K:
        raise UserError(f"{path}: holds {len(images)} samples; "
                        f"precision and recall (k = {K}) need more than {K}")
    return images


def get_args(argv=None):
    parser = arg_parser(
        description="Sample-quality scores in the feature space of a small MNIST classifier.",
        epilog="SAMPLES is a .npy array of digits: float (N, 1, 28, 28) or (N, 28, 28) in [-1, 1] "
               "(as part2_diffusion.py writes them), or uint8 in 0..255. The classifier is trained "
               "on first use (a minute or two) and cached; FID and N depend on each other, so "
               "compare at equal N.")
    parser.add_argument("samples", nargs="?", help="samples.npy to evaluate")
    parser.add_argument("--calibrate", action="store_true",
                        help="print the scores for real, noisy, blurred and pure-noise images "
                        "instead")
    parser.add_argument("--n", type=int, default=N_CALIBRATION,
                        help="images per calibration row (%(default)s)")
    parser.add_argument("--data-dir", default="data",
                        help="folder with the MNIST files (%(default)s)")
    parser.add_argument("--classifier", metavar="PATH",
                        help=f"cached classifier (default: DATA_DIR/{CLASSIFIER_FILE}; "
                        "trained if missing)")
    parser.add_argument("--json", metavar="OUT", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    if args.calibrate == (args.samples is not None):
        parser.error("give either SAMPLES or --calibrate")
    return args


def main(argv=None):
    args = get_args(argv)
    if args.calibrate and args.n < K + 1:
        raise UserError(f"--n must be at least {K + 1} (precision and recall use k = {K}); "
                        f"got {args.n}")
    if args.json:
        check_output_file(args.json, "--json")
    samples = None if args.calibrate else load_samples(args.samples)

    classifier, _ = load_or_train_classifier(args.data_dir, args.classifier)
    test_x, _ = load_mnist(args.data_dir, train=False,
                           need="the FID reference is the real MNIST test set")
    print(f"FID reference: {len(test_x)} MNIST test digits; "
          f"precision/recall: k = {K}, against N of them")
    if args.calibrate:
        train_x, train_y = load_mnist(args.data_dir, train=True,
                                      need="calibration needs real MNIST")
        rows = calibrate(classifier, train_x, train_y, test_x, args.n)
        print(format_table(rows))
        result = {name: row for name, row in rows}
    else:
        result = evaluate(samples, classifier, test_x)
        print(format_table([(Path(args.samples).name, result)]))
        print(f"class histogram (digits 0-9): {' '.join(map(str, result['class_histogram']))}")
    if args.json:
        save_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_main(main)
