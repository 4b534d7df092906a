"""autoencoder.py: the latent space of Part 3."""
import pytest
import torch

import autoencoder
from outputs import UserError


def digits(n=64, seed=0):
    """Blobs of ink on a black background, (n, 1, 28, 28) in [-1, 1]:
    enough to train a few steps on."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 7, 7, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    return torch.where(x > 0.6, 1.0, -1.0)


def test_shapes_and_the_latent_is_four_times_smaller():
    model = autoencoder.Autoencoder()
    x = digits(8)
    z = model.encode(x)
    assert z.shape == (8, autoencoder.LATENT_CHANNELS, 8, 8) and model.decode(z).shape == x.shape
    assert x[0].numel() / z[0].numel() >= 4


def test_fit_scale_gives_latents_of_unit_variance():
    torch.manual_seed(0)
    model = autoencoder.Autoencoder()
    x = digits(200)
    autoencoder.fit_scale(model, x, batch=64)
    assert model.encode(x).std().item() == pytest.approx(1.0, rel=1e-4)
    z = torch.randn(4, autoencoder.LATENT_CHANNELS, 8, 8)
    assert torch.allclose(model.decode(z), model.decoder(z / model.scale)[:, :, 2:-2, 2:-2])


def test_training_lowers_the_loss_and_the_kl_term_counts():
    torch.manual_seed(0)
    model, x = autoencoder.Autoencoder(), digits(64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = autoencoder.loss(model, x).item()
    for _ in range(40):
        value = autoencoder.loss(model, x)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < 0.5 * first


def test_the_kl_term_adds_to_the_loss(monkeypatch):
    model, x = autoencoder.Autoencoder(), digits(16)

    def loss_with(weight):
        monkeypatch.setattr(autoencoder, "KL_WEIGHT", weight)
        torch.manual_seed(1)  # the same reparameterisation noise each time
        return autoencoder.loss(model, x).item()

    plain, mean, logvar = loss_with(0.0), *model.moments(x)
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean().item()  # KL(N(m, s^2) || N(0, 1))
    assert kl > 0 and loss_with(1.0) == pytest.approx(plain + kl, rel=1e-5)


def test_a_damaged_cache_is_one_line(tmp_path):
    (tmp_path / autoencoder.CACHE_FILE).write_bytes(b"not a model")
    with pytest.raises(UserError, match="delete it to train a new one"):
        autoencoder.load_or_train(tmp_path)


@pytest.mark.parametrize("minutes", ["0", "-1", "nan", "inf", "soon"])
def test_minutes_must_be_a_finite_positive_number(minutes, tmp_path):
    with pytest.raises(UserError, match="--minutes|number") as error:
        autoencoder.main(["--data-dir", str(tmp_path), "--minutes", minutes])
    assert "\n" not in str(error.value), str(error.value)


def test_a_spent_budget_stops_training_with_a_progress_line(capsys):
    lines = []
    model = autoencoder.train(digits(64), epochs=3, minutes=1e-9, log=lines.append)
    assert isinstance(model, autoencoder.Autoencoder)
    assert any("stopped after 1 of 3 steps" in line for line in lines), lines
    assert "autoencoder: step 1/3" in capsys.readouterr().err
