"""Part 1: can a tiny network learn an inverse function?

We draw x ~ U[-1, 1], compute y = sin(x), and train a 1 -> 3 -> 3 -> 1 ReLU MLP to predict x from y,
i.e. to learn x = arcsin(y). The fit is scored on a dense held-out grid of y in [sin(-1), sin(1)]
against the true arcsin(y). Three experiments probe where it breaks:

  python part1_inversion.py                             # the fit: figures, loss curve, error table
  python part1_inversion.py --experiment outside        # predict for y in [-2, 2]: extrapolation
  python part1_inversion.py --experiment non-invertible # x ~ U[-pi, pi]: the net predicts E[x | y]
  python part1_inversion.py --experiment capacity       # hidden (3,3), (8,8), (32,32): MSE vs size

Each run prints the held-out MSE and max |error|, next to those of the least-squares straight line
(the bar any network has to clear), and writes to runs/part1/ (or --out): fit.png (the training
pairs, arcsin(y) and the net's prediction), error.png (net(y) - arcsin(y) on the grid: one bump per
linear piece), loss.png (every training loss L-BFGS evaluated, and the best validation MSE so far)
and fit.json (the settings and the numbers); each experiment writes its own PNG and JSON. Flags:
--seed, --n, --hidden (try --hidden 8 8), --activation relu|tanh, --restarts, --hops, --out; --help
explains each.

How it trains (the comment above train() gives the reasons): a ReLU net computes a piecewise-linear
function, so its accuracy depends on where its few kinks sit, and plain Adam from PyTorch's default
start pushes them off the data. So the net starts as a least-squares linear spline with its knots
where the data bends (part1_spline_start.py, which you may skip); full-batch L-BFGS in float64 then
slides the knots into place, from RESTARTS starts, and the net with the lowest MSE on a validation
split (never fitted) wins.

Next: schedule.py, the diffusion math of Part 2.
"""
import argparse
import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from outputs import UserError, arg_parser, check_writable, run_main, save_figure, save_json, \
    seed
from part1_spline_start import (init_weights, least_squares, place_kinks, revive_dead_units,
                                spline_start)

# float64: the fits reach a tiny MSE (about 3e-6), and L-BFGS decides when to stop from loss
# changes far below it; in float32 those decisions drown in rounding. A 22-weight net costs the same
# in either precision.
DTYPE = torch.float64
N_SAMPLES = 1000  # training pairs (y, x); a fifth of them is the validation split
# more for the non-invertible case: x | y scatters over pi, so its mean is noisier to fit
N_NON_INVERTIBLE = 2000
HIDDEN = (3, 3)  # the lab's architecture: 1 -> 3 -> 3 -> 1
RESTARTS = 4  # fits from a fresh start: a least-squares spline for ReLU, random kinks otherwise
HOPS = 0  # refits of the best net with one kink moved at random (helps tanh and odd shapes)
FIT_STEPS = 100  # L-BFGS iterations per fit: enough to tell a good basin from a bad one
POLISH_STEPS = 300  # L-BFGS iterations for the final polish of the best net
Y_MAX = math.sin(1.0)  # training x in [-1, 1] means y in [-0.841, 0.841]
Y_GRID = torch.linspace(-Y_MAX, Y_MAX, 2001, dtype=DTYPE)[:, None]  # held-out grid, (2001, 1)


# --- data -----------------------------------------------------------------------------------------

def make_data(n, generator, x_max=1.0):
    """n pairs x ~ U[-x_max, x_max], y = sin(x). Returns (y, x), each (n, 1)."""
    x = (2 * torch.rand(n, 1, generator=generator, dtype=DTYPE) - 1) * x_max
    return torch.sin(x), x


# --- the network ----------------------------------------------------------------------------------

def make_mlp(hidden, activation):
    """Linear -> act -> ... -> Linear, widths 1 -> hidden... -> 1. Maps (n, 1) -> (n, 1)."""
    # BEGIN EXERCISE 1: the multilayer perceptron
    # HINT: nn.Sequential; per hidden width h: nn.Linear(in, h), activation; nn.Linear(., 1); DTYPE
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers, width = [], 1
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(DTYPE)
    # END EXERCISE


# --- one training step, inside L-BFGS -------------------------------------------------------------

def fit(model, y, x, losses, steps=FIT_STEPS, history=10):
    """Full-batch L-BFGS on the MSE; appends each evaluated training loss to `losses`. `history`:
    how many past steps L-BFGS remembers to model the curvature; each step's cost grows with it, but
    so does the precision of the end point, so short searching fits keep 10 and the final polish
    100."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, history_size=history,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15)

    # L-BFGS calls this as often as its line search needs: one training step's worth each time
    def closure():
        # BEGIN EXERCISE 2: one training step's loss and gradient
        # HINT: zero old gradients, MSE of model(y) vs x, backward, record loss.item(), return it
        opt.zero_grad()
        loss = ((model(y) - x) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        return loss
        # END EXERCISE

    opt.step(closure)


# --- training -------------------------------------------------------------------------------------

def mse(model, y, x):
    with torch.no_grad():
        return ((model(y) - x) ** 2).mean().item()


# Why this recipe (measured over many seeds). A ReLU net's fit depends on
# where its few kinks sit, and from PyTorch's default start Adam pushes them off the data for good.
# So each net starts with its kinks in the data (part1_spline_start.py tells how), full-batch
# L-BFGS slides them into place, and since the loss still has local minima we fit RESTARTS times
# and keep the net with the lowest MSE on the validation split (never fitted).
def train(y, x, hidden=HIDDEN, activation="relu", seed=0, restarts=RESTARTS, hops=HOPS):
    """Fit an MLP to (y, x), both (n, 1). Returns (model, curves): curves["loss"] lists every
    training loss L-BFGS evaluated (all fits in order, the polish last), curves["best"] the best
    validation MSE at each of those evaluations up to the polish."""
    g = torch.Generator().manual_seed(seed)
    n_val = max(1, len(y) // 5)
    y_fit, x_fit, y_val, x_val = y[n_val:], x[n_val:], y[:n_val], x[:n_val]
    curves = {"loss": [], "best": []}
    best, best_val = None, math.inf
    for attempt in range(restarts + hops):
        model = make_mlp(hidden, activation)
        if attempt < restarts and activation == "relu" and len(hidden) == 2:
            # a linear spline fitted by least squares, its knots jittered after the first start
            spline_start(model, y_fit, x_fit, g, jitter=0.0 if attempt == 0 else 1.0)
        elif attempt < restarts:  # nets the spline does not fit (tanh, other depths):
            init_weights(model, y_fit, g)  # each kink at a random training input
        else:
            # a hop: the best net so far, with one random hidden unit's kink moved to a random
            # training input; like any start, it wins only if the validation MSE drops
            model.load_state_dict(best.state_dict())
            k = torch.randint(len(hidden), (1,), generator=g).item()
            unit = torch.randint(hidden[k], (1,), generator=g).item()
            place_kinks(model, 2 * k, [unit], y_fit, g)
        fit(model, y_fit, x_fit, curves["loss"])
        # a unit that ends a fit dead (constant on all inputs) is re-seeded and the fit resumed;
        # a re-seeded unit can die again: a few tries, then move on
        for _ in range(4):
            if revive_dead_units(model, y_fit, g) == 0:
                break
            fit(model, y_fit, x_fit, curves["loss"])
        val = mse(model, y_val, x_val)
        if val < best_val:
            best, best_val = model, val
        curves["best"] += [best_val] * (len(curves["loss"]) - len(curves["best"]))
    # a long L-BFGS polish of the winner ends it
    fit(best, y_fit, x_fit, curves["loss"], steps=POLISH_STEPS, history=100)
    return best, curves


# --- evaluation: the error against the true inverse -----------------------------------------------

def grid_error(model, y=Y_GRID):
    """Error against the true inverse on y: (m, 1) with |y| <= 1. Returns MSE and max |error|."""
    with torch.no_grad():
        err = model(y) - torch.asin(y)
    return {"mse": err.pow(2).mean().item(), "max_abs_error": err.abs().max().item()}


def straight_line(y, x):
    """The least-squares line x = a*y + b through the training pairs: the bar any net has to
    clear."""
    a, b = least_squares(torch.cat([y, torch.ones_like(y)], 1), x).tolist()
    return lambda t: a * t + b


# --- the experiments ------------------------------------------------------------------------------

def print_table(title, header, rows):
    print(title)
    print("  ".join(f"{h:>14}" for h in header))
    for row in rows:
        print("  ".join(f"{v:>14.3e}" if isinstance(v, float) else f"{v:>14}" for v in row))


def plot_curve(ax, y, model, label):
    with torch.no_grad():
        ax.plot(y[:, 0], model(y)[:, 0], label=label)


def run_fit(args, out):
    """The lab itself: fit arcsin on the training range, score it on the held-out grid."""
    y, x = make_data(args.n, torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    model, curves = train(y, x, args.hidden, args.activation, args.seed, args.restarts, args.hops)
    seconds = time.perf_counter() - start
    net, line = grid_error(model), grid_error(straight_line(y, x))
    name = "1-" + "-".join(map(str, args.hidden)) + f"-1 {args.activation}"
    print_table(f"held-out grid: {len(Y_GRID)} points, y in [{-Y_MAX:.3f}, {Y_MAX:.3f}], "
                f"trained in {seconds:.1f} s",
                ["model", "MSE", "max |error|"],
                [[name, net["mse"], net["max_abs_error"]],
                 ["straight line", line["mse"], line["max_abs_error"]]])
    plot_fit(y, x, model, name, net, args, out)
    plot_loss(curves, args, out)
    save_json(out / "fit.json",
              {"args": vars(args), "net": net, "straight_line": line, "seconds": seconds})
    return net


def plot_fit(y, x, model, name, net, args, out):
    """fit.png: the training pairs, arcsin and the net; error.png: the net's error on the grid."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(y[:, 0], x[:, 0], s=8, c="gray", alpha=0.5, label=f"training pairs (n={args.n})")
    ax.plot(Y_GRID[:, 0], torch.asin(Y_GRID)[:, 0], "k--", label="arcsin(y)")
    plot_curve(ax, Y_GRID, model, f"net ({name})")
    ax.set(title="Predicted x against the true inverse", xlabel="y = sin(x)", ylabel="x")
    ax.legend()
    save_figure(fig, out / "fit.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    with torch.no_grad():
        ax.plot(Y_GRID[:, 0], (model(Y_GRID) - torch.asin(Y_GRID))[:, 0])
    ax.axhline(0, color="k", lw=0.5)
    ax.set(title=f"Error on the held-out grid (MSE {net['mse']:.2e})", xlabel="y",
           ylabel="net(y) - arcsin(y)")
    save_figure(fig, out / "error.png")


def plot_loss(curves, args, out):
    """loss.png: every training loss L-BFGS evaluated, and the best validation MSE so far."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(curves["loss"], lw=0.6, label="training MSE of the fit in progress")
    ax.semilogy(curves["best"], lw=1.5, label="validation MSE of the best net so far")
    ax.axvline(len(curves["best"]), color="k", lw=0.5, ls=":")
    hops = f" and {args.hops} hops" if args.hops else ""
    ax.set(title=f"L-BFGS over {args.restarts} starts{hops}, then the polish",
           xlabel="loss evaluation", ylabel="MSE")
    ax.legend()
    save_figure(fig, out / "loss.png")


def run_outside(args, out):
    """Ask the net about y it never saw: |y| up to 1 (arcsin exists, slope blows up) and beyond (it
    does not)."""
    y, x = make_data(args.n, torch.Generator().manual_seed(args.seed))
    model, _ = train(y, x, args.hidden, args.activation, args.seed, args.restarts, args.hops)
    y_edge = torch.linspace(Y_MAX, 1.0, 1001, dtype=DTYPE)[:, None]
    y_edge = torch.cat([-y_edge, y_edge])  # sin(1) < |y| <= 1: arcsin defined, but no training data
    y_far = torch.tensor([[-2.0], [2.0]], dtype=DTYPE)
    inside, edge = grid_error(model), grid_error(model, y_edge)
    with torch.no_grad():
        far = model(y_far)[:, 0].tolist()
    print_table("outside the training range", ["y range", "MSE", "max |error|"],
                [["|y| <= 0.841", inside["mse"], inside["max_abs_error"]],
                 ["0.841 < |y| <= 1", edge["mse"], edge["max_abs_error"]]])
    print(f"net(-2) = {far[0]:.3f}, net(2) = {far[1]:.3f}; arcsin is undefined for |y| > 1")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    y_wide = torch.linspace(-2, 2, 2001, dtype=DTYPE)[:, None]
    y_def = torch.linspace(-1, 1, 2001, dtype=DTYPE)[:, None]
    ax.axvspan(-Y_MAX, Y_MAX, color="green", alpha=0.1, label="training range of y")
    ax.plot(y_def[:, 0], torch.asin(y_def)[:, 0], "k--", label="arcsin(y), defined for |y| <= 1")
    plot_curve(ax, y_wide, model, "net")
    ax.set(title=f"Extrapolation: max |error| {edge['max_abs_error']:.2f} for 0.84 < |y| <= 1",
           xlabel="y", ylabel="x")
    ax.legend()
    save_figure(fig, out / "outside.png")
    result = {"inside": inside, "edge": edge, "net_at_minus_2": far[0], "net_at_2": far[1]}
    save_json(out / "outside.json", {"args": vars(args), **result})
    return result


def conditional_mean(y):
    """E[x | y] for x ~ U[-pi, pi], y = sin(x). Each y != 0 has two preimages, arcsin(y) and
    sign(y)*pi - arcsin(y); both have the same density, p(x) / |cos x|, since |cos| agrees there.
    Their average is sign(y) * pi/2."""
    return torch.sign(y) * math.pi / 2


def run_non_invertible(args, out):
    """x ~ U[-pi, pi]: sin is not invertible there, and the MSE-optimal answer is the mean of the
    two branches."""
    g = torch.Generator().manual_seed(args.seed)
    y, x = make_data(args.n, g, x_max=math.pi)
    model, _ = train(y, x, args.hidden, args.activation, args.seed, args.restarts, args.hops)
    y_test, x_test = make_data(100_000, g, x_max=math.pi)
    y_away = torch.linspace(0.3, 1, 701, dtype=DTYPE)[:, None]
    # the mean jumps at y = 0; a continuous net must cut that corner
    y_away = torch.cat([-y_away, y_away])
    with torch.no_grad():
        test_mse = ((model(y_test) - x_test) ** 2).mean().item()
        gap = (model(y_away) - conditional_mean(y_away)).abs().max().item()
    # The MSE of E[x|y] itself: x - sign(x)*pi/2 = |x| - pi/2 in magnitude, |x| ~ U[0, pi],
    # variance pi^2/12.
    floor = math.pi ** 2 / 12
    print_table("non-invertible: x ~ U[-pi, pi], y = sin(x)", ["quantity", "value"],
                [["test MSE", test_mse], ["pi^2/12", floor], ["max|net-E[x|y]|", gap]])
    print("test MSE: net on 100k fresh pairs; pi^2/12: the least MSE any function of y can reach "
          "(that of E[x|y]);")
    print("max|net-E[x|y]|: over 0.3 <= |y| <= 1, away from the jump of E[x|y] at y = 0")
    print("The bridge to Part 2: a denoiser trained with MSE likewise learns a mean, E[x_0 | x_t], "
          "over every clean image that fits a noisy one; sampling step by step, with fresh noise "
          "each step, turns that mean into a draw.")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    y_all = torch.linspace(-1, 1, 2001, dtype=DTYPE)[:, None]
    ax.scatter(y[:, 0], x[:, 0], s=8, c="gray", alpha=0.5, label="training pairs: two branches")
    ax.plot(y_all[:, 0], conditional_mean(y_all)[:, 0], "k--", label="E[x | y] = sign(y) pi/2")
    plot_curve(ax, y_all, model, "net")
    ax.set(title=f"Non-invertible: MSE regression predicts the mean (test MSE {test_mse:.3f})",
           xlabel="y = sin(x)", ylabel="x")
    ax.legend()
    save_figure(fig, out / "non_invertible.png")
    result = {"test_mse": test_mse, "least_possible_mse": floor, "max_gap_to_conditional_mean": gap}
    save_json(out / "non_invertible.json", {"args": vars(args), **result})
    return result


def run_capacity(args, out):
    """Same data, same recipe, wider nets: how does the held-out MSE fall with the number of
    weights?"""
    y, x = make_data(args.n, torch.Generator().manual_seed(args.seed))
    rows = []
    for hidden in [(3, 3), (8, 8), (32, 32)]:
        start = time.perf_counter()
        model, _ = train(y, x, hidden, args.activation, args.seed, args.restarts, args.hops)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"hidden": list(hidden), "params": params, **grid_error(model),
                     "seconds": time.perf_counter() - start})
    print_table("capacity (held-out grid)", ["hidden", "weights", "MSE", "max |error|", "seconds"],
                [[str(r["hidden"]), r["params"], r["mse"], r["max_abs_error"],
                  f"{r['seconds']:.1f}"] for r in rows])

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog([r["params"] for r in rows], [r["mse"] for r in rows], "o-")
    for r in rows:
        ax.annotate(str(tuple(r["hidden"])), (r["params"], r["mse"]))
    ax.set(title=f"Capacity: held-out MSE against size ({args.activation})",
           xlabel="number of weights", ylabel="held-out MSE")
    save_figure(fig, out / "capacity.png")
    save_json(out / "capacity.json", {"args": vars(args), "rows": rows})
    return rows


EXPERIMENTS = {"fit": run_fit, "outside": run_outside, "non-invertible": run_non_invertible,
               "capacity": run_capacity}


# --- the command line -----------------------------------------------------------------------------

def get_args(argv):
    # arg_parser: argparse's own complaints become the same one-line error (exit 2, no usage dump)
    parser = arg_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="fit", choices=list(EXPERIMENTS),
                        help="fit (default): learn arcsin and score it; outside: predict for y in "
                             "[-2, 2]; non-invertible: train on x in [-pi, pi]; capacity: hidden "
                             "(3,3), (8,8), (32,32)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed for the data and the training (default 0)")
    parser.add_argument("--out", default="runs/part1",
                        help="folder for figures and JSON (default runs/part1)")
    parser.add_argument("--n", type=int, default=None,
                        help=f"training pairs (default {N_SAMPLES}; {N_NON_INVERTIBLE} for "
                             "non-invertible)")
    parser.add_argument("--hidden", type=int, nargs="*", default=list(HIDDEN),
                        help="hidden layer widths (default 3 3); ignored by --experiment capacity")
    parser.add_argument("--activation", default="relu", choices=["relu", "tanh"],
                        help="hidden activation (default relu)")
    parser.add_argument("--restarts", type=int, default=RESTARTS,
                        help=f"fits from a fresh start, a least-squares spline for ReLU "
                             f"(default {RESTARTS})")
    parser.add_argument("--hops", type=int, default=HOPS,
                        help=f"refits of the best net with one kink moved (default {HOPS})")
    return check_args(parser.parse_args(argv))


def check_args(args):
    """Fill in --n's default and reject impossible settings with one line (UserError)."""
    if args.n is None:
        args.n = N_NON_INVERTIBLE if args.experiment == "non-invertible" else N_SAMPLES
    if args.n < 2:
        raise UserError(f"--n must be at least 2 (got {args.n}): one sample or more is kept for "
                        "validation")
    if not args.hidden or min(args.hidden) < 1:
        raise UserError(f"--hidden needs one or more positive layer widths, e.g. --hidden 3 3 "
                        f"(got {args.hidden})")
    if args.restarts < 1 or args.hops < 0:
        raise UserError(f"--restarts must be >= 1 and --hops >= 0 (got {args.restarts} and "
                        f"{args.hops})")
    return args


def main(argv=None):
    args = get_args(argv)
    # before training, so a bad --out costs nothing and writes nothing
    out = check_writable(args.out)
    return EXPERIMENTS[args.experiment](args, out)


if __name__ == "__main__":
    # One thread: each op on this net is so small that splitting it across cores costs more than it
    # saves (measured several times slower with 2 threads on a busy 2-core machine).
    torch.set_num_threads(1)
    run_main(main)
