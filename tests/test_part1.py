"""Part 1: the data, the network's shapes, what a short training reaches, the non-invertible case,
bad input, and the start-up machinery of part1_spline_start.py."""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import part1_inversion as p1
import part1_spline_start as p1s
from outputs import run_main


# --- data and network -----------------------------------------------------------------------------

def test_data_is_sin_of_uniform_x():
    y, x = p1.make_data(2000, torch.Generator().manual_seed(0))
    assert y.shape == x.shape == (2000, 1) and y.dtype == torch.float64
    assert x.abs().max() <= 1 and torch.equal(y, torch.sin(x))
    # U[-1, 1]: mean 0, variance 1/3
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - 1 / 3) < 0.03
    y2, x2 = p1.make_data(2000, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    _, x_pi = p1.make_data(2000, torch.Generator().manual_seed(0), x_max=math.pi)
    assert x_pi.abs().max() <= math.pi and x_pi.abs().max() > 3  # both branches of sin are present


@pytest.mark.ex1
@pytest.mark.parametrize("hidden, weights", [((3, 3), 22), ((8, 8), 97), ((5,), 16)])
def test_mlp_shapes(hidden, weights):
    for activation in ["relu", "tanh"]:
        model = p1.make_mlp(hidden, activation)
        shape = tuple(model(torch.zeros(7, 1, dtype=torch.float64)).shape)
        assert shape == (7, 1), (
            f"make_mlp({hidden}, {activation!r}) maps (7, 1) inputs to {shape}; expected (7, 1)")
        count = sum(p.numel() for p in model.parameters())
        assert count == weights, (
            f"make_mlp({hidden}, {activation!r}) has {count} weights and biases; expected "
            f"{weights} (widths 1 -> {' -> '.join(map(str, hidden))} -> 1, a bias per unit)")


@pytest.mark.ex1
@pytest.mark.parametrize("activation, act", [("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)])
def test_mlp_is_linear_activation_linear_activation_linear(activation, act):
    model = p1.make_mlp((3, 4), activation)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Linear", act.__name__, "Linear", act.__name__, "Linear"], (
        f"make_mlp((3, 4), {activation!r}) has layers {kinds}; expected Linear, {act.__name__}, "
        f"Linear, {act.__name__}, Linear (an nn.Sequential)")
    sizes = [(m.in_features, m.out_features) for m in model[::2]]
    assert sizes == [(1, 3), (3, 4), (4, 1)], (
        f"make_mlp((3, 4), ...): Linear layers of sizes {sizes}; expected (1, 3), (3, 4), (4, 1)")
    dtypes = {str(p.dtype) for p in model.parameters()}
    assert dtypes == {"torch.float64"}, (
        f"make_mlp's weights are {dtypes}; expected torch.float64 (DTYPE)")
    y = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    with torch.no_grad():  # the forward pass is the layers in that order, nothing else
        h = act()(model[0](y))
        expected = model[4](act()(model[2](h)))
        assert torch.equal(model(y), expected), (
            "make_mlp's forward pass should be its layers in order, nothing else")


# --- training -------------------------------------------------------------------------------------

@pytest.mark.ex2
def test_fit_finds_a_line_and_records_the_mse():
    """A single Linear layer (not the exercise-1 MLP) on x = 2y + 1: L-BFGS must land on w = 2,
    b = 1."""
    y = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
    x = 2 * y + 1
    model = torch.nn.Linear(1, 1).to(torch.float64)
    with torch.no_grad():
        model.weight.fill_(-0.5)
        model.bias.fill_(0.3)
    first = p1.mse(model, y, x)  # the mean, not the sum, of the squared errors
    losses = []
    p1.fit(model, y, x, losses, steps=20)
    assert losses, "fit recorded no losses: append loss.item() to `losses` at every evaluation"
    assert losses[0] == pytest.approx(first, rel=1e-12), (
        f"the first recorded loss is {losses[0]:.6g}; expected the MSE of the starting line, "
        f"{first:.6g} (one entry per evaluation: the mean of the squared errors, recorded as a "
        "number)")
    assert losses[-1] < 1e-12 and len(losses) >= 2, (
        f"L-BFGS on x = 2y + 1 ended at loss {losses[-1]:.3g} after {len(losses)} evaluations; "
        "expected below 1e-12: clear the old gradients, backpropagate, and return the loss")
    w, b = model.weight.item(), model.bias.item()
    assert w == pytest.approx(2, abs=1e-6) and b == pytest.approx(1, abs=1e-6), (
        f"L-BFGS on x = 2y + 1 ended at w = {w:.6g}, b = {b:.6g}; expected w = 2, b = 1")


@pytest.fixture(scope="module")
def short_fit():
    """A seeded training shorter than the default (2 restarts and 2 hops instead of 4 and 0)."""
    y, x = p1.make_data(p1.N_SAMPLES, torch.Generator().manual_seed(0))
    model, curves = p1.train(y, x, seed=0, restarts=2, hops=2)
    return model, curves


# The bound: this short recipe, run on seeds 0..19, had a max |error| on the held-out grid of 0.0045
# to 0.0069 (median 0.0052). 0.02 leaves room for rounding differences across machines, yet stays
# far under the max |error| of the best straight line (0.071), so a dead or collapsed
# net fails this test.
@pytest.mark.ex2(depends=[1])
@settings(max_examples=200, deadline=None)
@given(y=st.floats(-math.sin(1.0), math.sin(1.0)))
def test_short_training_stays_close_to_arcsin(short_fit, y):
    model, _ = short_fit
    with torch.no_grad():
        prediction = model(torch.tensor([[y]], dtype=torch.float64)).item()
    assert abs(prediction - math.asin(y)) < 0.02, (
        f"after a short training the net predicts {prediction:.5f} at y = {y:.5f}; expected "
        f"arcsin(y) = {math.asin(y):.5f} within 0.02")


@pytest.mark.ex2(depends=[1])
def test_training_lowers_the_loss(short_fit):
    _, curves = short_fit
    assert 0 < len(curves["best"]) < len(curves["loss"]), (  # the polish comes after the search
        f"training recorded {len(curves['loss'])} losses and {len(curves['best'])} best validation "
        "MSEs; expected every evaluation of the closure recorded in `losses`")
    # from the spline start, training lowers the loss well below a fifth on seeds 0..19
    assert min(curves["loss"]) < 0.2 * curves["loss"][0], (
        f"the training loss fell from {curves['loss'][0]:.4g} to {min(curves['loss']):.4g} at "
        "best; expected below a fifth of where it started")
    # the best so far never gets worse
    worse = [i + 1 for i, (a, b) in enumerate(zip(curves["best"], curves["best"][1:])) if b > a]
    assert not worse, (f"the best validation MSE so far rose at entries {worse[:5]} of "
                       "curves['best']; it is the lowest seen so far, so it can only fall")


# --- the experiments ------------------------------------------------------------------------------

def test_conditional_mean_matches_monte_carlo():
    y, x = p1.make_data(400_000, torch.Generator().manual_seed(4), x_max=math.pi)
    for y0 in [-0.8, -0.3, 0.2, 0.6]:
        near = (y - y0).abs() < 0.01
        assert abs(x[near].mean().item() - p1.conditional_mean(torch.tensor(y0)).item()) < 0.05


def test_non_invertible_net_predicts_the_conditional_mean():
    y, x = p1.make_data(p1.N_NON_INVERTIBLE, torch.Generator().manual_seed(0), x_max=math.pi)
    model, _ = p1.train(y, x, seed=0, restarts=2, hops=4)
    y_away = torch.linspace(0.3, 1, 300, dtype=torch.float64)[:, None]
    y_away = torch.cat([-y_away, y_away])
    with torch.no_grad():
        gap = (model(y_away) - p1.conditional_mean(y_away)).abs().max().item()
    # Seeds 0..19 of this short recipe gave gaps of 0.023 to 0.198 (median 0.11): the mean of two
    # branches is fitted from finite data. 0.4 is twice the worst, and far below the 1.27 a net
    # would show had it learned arcsin.
    assert gap < 0.4


@pytest.mark.e2e
def test_same_seed_same_result(tmp_path):
    argv = ["--restarts", "1", "--hops", "2", "--seed", "3"]
    first = p1.main(argv + ["--out", str(tmp_path / "a")])
    second = p1.main(argv + ["--out", str(tmp_path / "b")])
    assert first == second
    for name in ["fit.png", "error.png", "loss.png", "fit.json"]:
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert json.loads((tmp_path / "a" / "fit.json").read_text())["net"] == first


# --- the command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--n", "0"], "--n"),
    (["--n", "-5"], "--n"),
    (["--activation", "sigmoid"], "sigmoid"),
    (["--hidden"], "--hidden"),
    (["--hidden", "3", "0"], "--hidden"),
    (["--experiment", "nope"], "nope"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    """Through run_main, exactly as `python part1_inversion.py ...` runs (a subprocess would only
    add seconds)."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: p1.main(argv + ["--out", str(out)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err
    assert not out.exists()  # rejected before anything was created


def test_unwritable_output_folder_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: p1.main(["--out", str(blocker / "run")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err
    assert blocker.read_text() == "not a folder"


# --- the start-up machinery (part1_spline_start.py) -----------------------------------------------

def test_init_puts_every_kink_inside_the_data():
    y, _ = p1.make_data(200, torch.Generator().manual_seed(1))
    model = p1.make_mlp((3, 3), "relu")
    p1s.init_weights(model, y, torch.Generator().manual_seed(1))
    for k in (0, 2):
        with torch.no_grad():
            pre = model[:k + 1](y)  # (n, units) pre-activations of hidden layer k
        assert (pre.min(0).values <= 1e-12).all() and (pre.max(0).values >= -1e-12).all()


def test_dead_unit_is_revived():
    y, _ = p1.make_data(200, torch.Generator().manual_seed(2))
    model = p1.make_mlp((3, 3), "relu")
    p1s.init_weights(model, y, torch.Generator().manual_seed(2))
    with torch.no_grad():
        model[0].bias[1] = -100.0  # unit 1 of the first layer is now off for every input: dead
    assert p1s.revive_dead_units(model, y, torch.Generator().manual_seed(3)) == 1
    with torch.no_grad():
        out = model[:2](y)[:, 1]
    assert out.max() > out.min()  # no longer constant


def test_knots_follow_the_curvature():
    """x = y^3 on [0, 1]: f'' = 6y, so the knot density is ~ y^(2/5), its integral ~ y^(7/5), and
    knot k of K sits at (k / (K + 1))^(5/7), up to the 1/1000 grid the knots are read from."""
    y = torch.linspace(0, 1, 501, dtype=torch.float64)[:, None]
    for k in (1, 6, 12):
        knots = p1s.knots_where_it_bends(y, y ** 3, k, 0.0, torch.Generator().manual_seed(0))
        expected = (torch.arange(1, k + 1, dtype=torch.float64) / (k + 1)) ** (5 / 7)
        assert torch.allclose(knots, expected, atol=2e-3)
    # f'' = 2 everywhere
    even = p1s.knots_where_it_bends(y, y ** 2, 4, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(even, torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64), atol=2e-3)
    jittered = p1s.knots_where_it_bends(y, y ** 2, 4, 1.0, torch.Generator().manual_seed(0))
    # half a spacing at most
    assert (jittered - even).abs().max() <= 0.1 + 2e-3 and not torch.equal(jittered, even)


def test_spline_start_uses_every_kink_and_a_least_squares_output():
    y, x = p1.make_data(p1.N_SAMPLES, torch.Generator().manual_seed(3))
    model = p1.make_mlp((3, 3), "relu")
    p1s.spline_start(model, y, x, torch.Generator().manual_seed(3), jitter=1.0)
    with torch.no_grad():
        pre1 = model[0](y)
        pre2 = model[2](torch.relu(pre1))
    # unit 0 of each layer is linear on the data
    assert (pre1[:, 0] > 0).all() and (pre2[:, 0] > 0).all()
    sign_changes = lambda col: (col[y[:, 0].argsort()] > 0).diff().sum().item()
    assert [sign_changes(pre1[:, j]) for j in (1, 2)] == [1, 1]  # one kink each, inside the data
    # each tent meets zero twice: 2 + 4 = 6 kinks
    assert [sign_changes(pre2[:, j]) for j in (1, 2)] == [2, 2]
    with torch.no_grad():  # what the output layer sees, and the net's error
        features, error = torch.relu(pre2), model(y) - x
    # Least squares: the error is orthogonal to every feature and to the bias (the output layer's
    # normal equations, i.e. a zero gradient of the MSE with respect to that layer: 2/n features^T
    # error).
    assert ((features.T @ error).abs().max() * 2 / len(y) < 1e-10
            and error.sum().abs() * 2 / len(y) < 1e-10)
    assert p1.mse(model, y, x) < 0.2 * p1.mse(p1.straight_line(y, x), y, x)


@pytest.mark.parametrize("hidden", [(2, 4), (4, 2), (8, 8)])
def test_spline_start_handles_unequal_widths(hidden):
    y, x = p1.make_data(300, torch.Generator().manual_seed(4))
    model = p1.make_mlp(hidden, "relu")
    p1s.spline_start(model, y, x, torch.Generator().manual_seed(4), jitter=1.0)
    assert p1.mse(model, y, x) < p1.mse(p1.straight_line(y, x), y, x)
