"""Part 1's start-up machinery: where a net's kinks sit before L-BFGS trains it. A student may
skip this file: the lab is part1_inversion.py, whose train() calls what is here.

Why it exists (measured over many seeds): a ReLU net computes a piecewise-linear
function, so how well it fits depends on where its few kinks sit. Adam from PyTorch's default
initialisation leaves most seeds with a straight line: the kinks are pushed off the data, where no
gradient brings them back. So a two-hidden-layer ReLU net starts as a linear spline fitted by least
squares (`spline_start`): knots where the data bends (`knots_where_it_bends`), tents in layer 2.
Nets the spline does not fit (tanh, other depths) start with each kink at a random training input
instead (`init_weights`). For any net, a unit that ends a fit dead (constant on all inputs) is
re-seeded (`revive_dead_units`), and a hop moves one kink to a random training input
(`place_kinks`).

Every function draws its random numbers from the generator it is given, in the precision of the net
or of the data (float64 in the lab), so the same seed gives the same start.

Next: schedule.py, as after part1_inversion.py.
"""
import math

import torch


def least_squares(a, b):
    """The c that minimises |a c - b|^2, for a: (n, k) and b: (n, 1). Returns (k,)."""
    # Driver gelsd (SVD) copes with all-zero columns (dead units) and with fewer rows than
    # columns; and the default driver's last digits depend on where the arrays sit in memory,
    # which L-BFGS would magnify into a different result for the same seed.
    return torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0]


def place_kinks(model, k, units, y, generator):
    """Give `units` of hidden layer model[k] fresh weights, with each unit's kink (pre-activation
    = 0; the centre of a tanh) at a randomly chosen training input, so it bends inside the data.
    y: (n, 1) inputs."""
    layer = model[k]
    dtype = layer.weight.dtype
    with torch.no_grad():
        h = model[:k](y)  # what layer k sees for each training input, (n, fan_in)
        for j in units:
            w = torch.randn(layer.in_features, generator=generator, dtype=dtype)
            w = w * math.sqrt(2 / layer.in_features)
            i = torch.randint(len(y), (1,), generator=generator).item()
            layer.weight[j] = w
            layer.bias[j] = -(h[i] @ w)


def init_weights(model, y, generator):
    """Kinks inside the data for every hidden unit; a small output layer so the net starts near
    constant."""
    for k in range(0, len(model) - 1, 2):
        place_kinks(model, k, range(model[k].out_features), y, generator)
    last = model[-1]
    with torch.no_grad():
        noise = torch.randn(last.weight.shape, generator=generator, dtype=last.weight.dtype)
        last.weight.copy_(0.1 * noise)
        last.bias.zero_()


def revive_dead_units(model, y, generator):
    """Re-seed every hidden unit whose output is the same for all training inputs (a dead ReLU).
    Returns how many."""
    revived = 0
    for k in range(0, len(model) - 1, 2):
        with torch.no_grad():
            out = model[:k + 2](y)  # the layer's activations, (n, units)
        dead = torch.nonzero(out.amax(0) == out.amin(0)).flatten().tolist()
        place_kinks(model, k, dead, y, generator)
        revived += len(dead)
    return revived


def knots_where_it_bends(y, x, k, jitter, generator):
    """k sorted knots in [min y, max y], dense where the data curves. jitter in [0, 1] moves each
    knot at random by up to jitter/2 of a spacing (in quantiles of that density). y, x: (n, 1).
    Returns (k,)."""
    # A straight piece of width h laid over a curve with second derivative f'' leaves a squared
    # error of about f''^2 h^5 / 720 (integrated over the piece), so the total is about the
    # integral of f''^2 h^4 / 720 dy; making it least for a fixed knot count (the integral of 1/h)
    # gives h^5 ~ 1/f''^2, a knot density proportional to |f''|^(2/5). f'' comes from a cubic
    # fitted to the data.
    powers = torch.cat([y ** p for p in range(4)], 1)
    c = least_squares(powers, x)  # x ~ c0 + c1 y + c2 y^2 + c3 y^3
    grid = torch.linspace(y.min().item(), y.max().item(), 1001, dtype=y.dtype)
    density = (2 * c[2] + 6 * c[3] * grid).abs() ** 0.4 + 1e-9  # |f''|^(2/5), never exactly zero
    cdf = torch.cumsum(density, 0) / density.sum()
    shake = jitter * (torch.rand(k, generator=generator, dtype=y.dtype) - 0.5)
    # the knot quantiles: 1/(k+1), ..., k/(k+1), shaken
    u = (torch.arange(1, k + 1, dtype=y.dtype) + shake) / (k + 1)
    return grid[torch.searchsorted(cdf, u).clamp(max=len(grid) - 1)].sort().values


def spline_start(model, y, x, generator, jitter):
    """Set a two-hidden-layer ReLU net to a linear spline through (y, x), both (n, 1), with its
    knots where the data bends.

    Layer 1: unit 0 is linear on the data, unit j >= 1 has its kink at a knot c_j. Layer 2: unit
    j >= 1 is a tent, zero at knots a_j < c_j < b_j with its apex at c_j (where it reads layer-1
    unit j's kink); unit 0 is positive on every training input, so it passes a mix of layer 1 (a
    line plus the kinks) through. That mix and the output layer are solved by least squares: the
    best fit of a line, the kinks and the fixed-shape tents (a free spline on the same knots could
    fit better; L-BFGS takes it from here)."""
    # units left out keep random weights; a dead one is revived after the fit
    init_weights(model, y, generator)
    l1, l2, out = model[0], model[2], model[4]
    tents = min(l1.out_features, l2.out_features) - 1
    knots = knots_where_it_bends(y, x, 3 * tents, jitter, generator).tolist()
    lo = y.min().item()
    with torch.no_grad():
        l1.weight[0], l1.bias[0] = 1.0, 1.0 - lo  # h_0 = y - lo + 1 > 0 on the data
        for j in range(1, tents + 1):
            a, c, b = knots[3 * j - 3: 3 * j]
            if not a < c < b:  # too few distinct inputs to keep the knots apart:
                continue  # these units keep random kinks
            l1.weight[j], l1.bias[j] = 1.0, -c  # h_j = relu(y - c)
            # tent_j = (y - a) - (b - a) / (b - c) * h_j: 0 at a, rising to its apex at c,
            # back to 0 at b
            l2.weight[j] = 0.0
            l2.weight[j, 0], l2.weight[j, j] = 1.0, -(b - a) / (b - c)
            l2.bias[j] = -(a - lo + 1.0)
        h = torch.relu(l1(y))
        tent = torch.relu(l2(h))[:, 1:]
        coef = least_squares(torch.cat([h, tent, torch.ones_like(y)], 1), x)
        width = l1.out_features
        mix, shift = coef[:width], (h @ coef[:width]).abs().max().item() + 1.0
        # unit 0 = mix . h + shift > 0 on every training input
        l2.weight[0], l2.bias[0] = mix, shift
        out.weight[0, 0], out.weight[0, 1:], out.bias[0] = 1.0, coef[width:-1], coef[-1] - shift
