"""Exercise 10: the training loss of Algorithm 1 (part2_diffusion.training_loss).

The tests hand training_loss a stand-in schedule, so that exercise 4 (q_sample) is not run and a
mistake there costs no points here. Its q_sample is a made-up map, not Eq. 4, but the tests know
it, so they know which eps went into x_t. training_loss needs only sched.T and sched.q_sample (the
hint).

part2_diffusion.py imports the rest of the lab (unet.py, schedule.py, ...), none of which
training_loss needs: when one of those files does not import, training_loss is read alone out of
part2_diffusion.py, so that a mistake in another exercise's file costs exercise 10 nothing. An error
in part2_diffusion.py itself still stops these tests, naming its line."""
import ast
import functools
import math
import traceback
from pathlib import Path

import pytest
import torch

PART2 = Path(__file__).resolve().parents[1] / "part2_diffusion.py"


def load_training_loss():
    """part2_diffusion.training_loss, even when a module that part2_diffusion imports is broken."""
    try:
        from part2_diffusion import training_loss
        return training_loss
    except Exception as error:
        if isinstance(error, SyntaxError):
            culprit = error.filename
        elif isinstance(error, ImportError) and error.name and error.name != "part2_diffusion":
            culprit = error.name  # `from unet import UNet` failing: unet's fault, not part2's
        else:
            culprit = traceback.extract_tb(error.__traceback__)[-1].filename
        if culprit and Path(culprit).resolve() == PART2:
            raise
    source = PART2.read_text()
    [function] = [node for node in ast.parse(source, str(PART2)).body
                  if isinstance(node, ast.FunctionDef) and node.name == "training_loss"]
    namespace = dict(torch=torch, F=torch.nn.functional, math=math)
    exec(compile(ast.Module([function], type_ignores=[]), str(PART2), "exec"), namespace)
    return namespace["training_loss"]


training_loss = load_training_loss()


class StandInSchedule:
    """T timesteps and a q_sample that makes x_t = x_0 + (t + 1) eps: invertible, so a model that
    knows the map can name the eps that went in, as a perfect noise predictor would."""

    def __init__(self, T):
        self.T, self.calls = T, []

    def q_sample(self, x0, t, eps):
        self.calls.append((x0, t, eps))
        return x0 + self.scale(t, x0) * eps

    @staticmethod
    def scale(t, x):
        return (t + 1).to(x.dtype).view(-1, *[1] * (x.dim() - 1))

    def __getattr__(self, name):  # only for names it does not have
        raise AttributeError(f"training_loss used sched.{name}; it needs only sched.T and "
                             "sched.q_sample(x0, t, eps) (exercise 4's method: x_t by Eq. 4)")


def saying_so(test):
    """`test`, whose failure messages add that sched is a stand-in."""
    @functools.wraps(test)
    def run():
        try:
            test()
        except AssertionError as error:
            first, *rest = str(error).split("\n", 1)
            raise AssertionError("\n".join([f"{first} (sched is a stand-in schedule: exercise 4's "
                                            "q_sample is not run)", *rest])) from None
    return run


@pytest.mark.ex10
@saying_so
def test_training_loss_is_the_noise_prediction_error():
    """A model that knows the map names eps exactly (loss 0), while a model that always says 0
    scores E[eps^2] = 1: the loss is the mean squared error of the predicted noise (Eq. 14)."""
    sched = StandInSchedule(50)
    x0 = torch.zeros(4000, 1, 2, 2)
    oracle = lambda x_t, t, y: x_t / sched.scale(t, x_t)
    zero = lambda x_t, t, y: torch.zeros_like(x_t)
    torch.manual_seed(0)
    loss = training_loss(oracle, sched, x0)
    calls = len(sched.calls)
    assert calls == 1, f"training_loss called sched.q_sample {calls} times; expected once"
    assert loss.dim() == 0, (f"training_loss returned shape {tuple(loss.shape)}; expected a single "
                             "number (the mean)")
    assert loss.item() < 1e-10, (
        f"training_loss with a model that returns exactly the eps that went into x_t: "
        f"{loss.item():.4g}; expected 0. Give the model the x_t that q_sample returned, with the "
        "same t, and compare with that eps")
    n = x0.numel()  # the mean of n squared standard normals has standard deviation sqrt(2 / n)
    loss = training_loss(zero, sched, x0).item()
    assert abs(loss - 1) < 5 * (2 / n) ** 0.5, (
        f"training_loss with a model that always predicts 0: {loss:.4f}; expected E[eps^2] = 1 "
        f"(+- {5 * (2 / n) ** 0.5:.3f}) for eps ~ N(0, I): the mean, not the sum, of the squares")
    _, _, noise = sched.calls[-1]
    assert noise.shape == x0.shape and noise.dtype == x0.dtype, (
        f"eps has shape {tuple(noise.shape)} {noise.dtype}; expected one standard normal per "
        "pixel, like x0")


@pytest.mark.ex10
@saying_so
def test_training_loss_draws_t_uniformly_and_passes_labels():
    sched, seen = StandInSchedule(10), []

    def model(x_t, t, y):
        seen.append((t, y))
        return torch.zeros_like(x_t)

    torch.manual_seed(0)
    y = torch.arange(5000) % 10
    training_loss(model, sched, torch.zeros(5000, 1, 2, 2), y)
    assert len(seen) == 1, (f"training_loss called the model {len(seen)} times; expected once, "
                            "on the whole batch")
    (t, y_seen), = seen
    assert t.dtype == torch.long and t.shape == (5000,), (
        f"the model got t of {t.dtype}, shape {tuple(t.shape)}; expected one long timestep per "
        "image, shape (5000,)")
    assert y_seen is not None and torch.equal(y_seen, y), "pass the labels y on to the model"
    assert torch.equal(sched.calls[0][1], t), "the model must get the same t that q_sample used"
    assert 0 <= int(t.min()) and int(t.max()) <= 9, (
        f"t ranged from {int(t.min())} to {int(t.max())}; expected code timesteps 0..T-1 = 0..9 "
        "(paper 1..T)")
    counts = torch.bincount(t, minlength=10)
    # each count is Binomial(5000, 0.1): mean 500, sd 21.2; allow 5 sd
    assert (counts - 500).abs().max() < 5 * (5000 * 0.1 * 0.9) ** 0.5, (
        f"t = 0..9 drawn {counts.tolist()} times out of 5000; expected about 500 each "
        "(t ~ Uniform)")
