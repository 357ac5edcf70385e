"""The mode-collapse protocol's reference players (PacGAN's pacgan_task.py create_model_brick): MLPGenerator with
BatchNorm before every hidden activation, MLPDiscriminator with maxout hidden layers, N(0, init_std^2) weights;
and the protocol configs build exactly those players."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_gan.models import Maxout, MLPDiscriminator, MLPGenerator

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shapes_of_the_reference_players():
    torch.manual_seed(0)
    generator = MLPGenerator(latent_dim=2, output_dim=2, hidden_dim=40, num_layers=4, batch_norm=True, init_std=0.02)
    discriminator = MLPDiscriminator(input_dim=2, hidden_dim=20, num_layers=3, activation="maxout", maxout_pieces=5,
                                     init_std=0.02)
    x = generator(torch.randn(7, 2))
    assert x.shape == (7, 2)
    scores = discriminator(x)
    assert scores.shape == (7,)
    scores.sum().backward()
    assert all(p.grad is not None for p in [*generator.parameters(), *discriminator.parameters()])
    features = MLPDiscriminator(hidden_dim=8, activation="maxout", maxout_pieces=3, features=4)(torch.randn(5, 2))
    assert features.shape == (5, 4)


def test_maxout_is_the_max_over_pieces_of_the_linear_maps():
    layer = Maxout(2, 3, pieces=2)
    with torch.no_grad():  # rows j * pieces + k: unit j, piece k (blocks' Maxout reshapes to (units, pieces))
        layer.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0],     # unit 0: max(x1, x2)
                                                [-1.0, 0.0], [0.0, -1.0],   # unit 1: max(-x1, -x2)
                                                [1.0, 1.0], [2.0, -1.0]]))  # unit 2: max(x1 + x2 + 1, 2 x1 - x2 - 1)
        layer.linear.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0]))
    x = torch.tensor([[3.0, -2.0], [0.5, 4.0]])
    # by hand: (3, -2): max(3, -2) = 3; max(-3, 2) = 2; max(2, 7) = 7.  (0.5, 4): 4; -0.5; max(5.5, -4) = 5.5
    assert torch.equal(layer(x), torch.tensor([[3.0, 2.0, 7.0], [4.0, -0.5, 5.5]]))
    # in general: the max over the pieces of one Linear's outputs
    torch.manual_seed(0)
    layer, x = Maxout(4, 6, pieces=5), torch.randn(9, 4)
    pieces = torch.stack([x @ layer.linear.weight[k::5].T + layer.linear.bias[k::5] for k in range(5)])
    torch.testing.assert_close(layer(x), pieces.max(0).values, rtol=0, atol=1e-6)


def test_maxout_discriminator_layers():
    discriminator = MLPDiscriminator(input_dim=2, hidden_dim=200, num_layers=3, activation="maxout", maxout_pieces=5)
    layers = list(discriminator.net)
    assert [type(m) for m in layers] == [Maxout, Maxout, Maxout, nn.Linear]
    assert [m.linear.weight.shape for m in layers[:3]] == [(1000, 2), (1000, 200), (1000, 200)]
    assert layers[3].weight.shape == (1, 200)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_batch_norm_present_or_absent_as_configured(batch_norm):
    generator = MLPGenerator(hidden_dim=16, num_layers=4, batch_norm=batch_norm)
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm1d)]
    linears = [m for m in generator.net if isinstance(m, nn.Linear)]
    assert len(norms) == (4 if batch_norm else 0)
    # the reference decoder: hidden Linear layers without bias (use_bias=False), a bias on the read-out only
    assert [m.bias is not None for m in linears] == ([False] * 4 if batch_norm else [True] * 4) + [True]
    if batch_norm:
        kinds = [type(m) for m in generator.net]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 4 + [nn.Linear]
        assert all(m.eps == 1e-4 and m.momentum == 0.05 for m in norms)  # blocks' epsilon; m * 0.05 + p * 0.95


def test_batch_norm_uses_running_statistics_in_eval_mode():
    torch.manual_seed(0)
    generator = MLPGenerator(hidden_dim=8, num_layers=2, batch_norm=True)
    z = torch.randn(64, 2)
    generator.train()
    generator(z)
    norm = generator.net[1]
    assert norm.num_batches_tracked == 1 and not torch.equal(norm.running_mean, torch.zeros(8))
    generator.eval()
    one, batch = generator(z[:1]), generator(z)
    torch.testing.assert_close(one, batch[:1])  # eval: a sample does not depend on its batch


def test_init_std():
    torch.manual_seed(0)
    generator = MLPGenerator(hidden_dim=400, num_layers=4, batch_norm=True, init_std=0.02)
    discriminator = MLPDiscriminator(hidden_dim=200, activation="maxout", init_std=0.02)
    for player in (generator, discriminator):
        for layer in player.modules():
            if isinstance(layer, nn.Linear):
                if layer.weight.numel() >= 10_000:
                    assert abs(float(layer.weight.detach().std()) - 0.02) < 0.001
                assert layer.bias is None or torch.equal(layer.bias, torch.zeros_like(layer.bias))
    norm = generator.net[1]
    assert torch.equal(norm.weight, torch.ones(400)) and torch.equal(norm.bias, torch.zeros(400))


def test_defaults_leave_the_players_unchanged():
    """No new layer, no new initialisation unless asked: the same modules and the same random draws as before."""
    torch.manual_seed(0)
    plain = MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16)
    torch.manual_seed(0)
    explicit = (MLPGenerator(hidden_dim=16, batch_norm=False, init_std=None),
                MLPDiscriminator(hidden_dim=16, activation="leaky_relu", maxout_pieces=5, init_std=None))
    for a, b in zip(plain, explicit):
        assert repr(a) == repr(b)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert [type(m) for m in plain[1].net] == [nn.Linear, nn.LeakyReLU] * 3 + [nn.Linear]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: MLPDiscriminator(activation="maxout", maxout_pieces=1),
     "Invalid maxout_pieces: 1; expected an integer >= 2 (1 piece is a plain Linear)"),
    (lambda: MLPDiscriminator(maxout_pieces=0), "Invalid maxout_pieces: 0; expected an integer >= 2"),
    (lambda: MLPDiscriminator(activation="maxout", maxout_pieces=2.5), "Invalid maxout_pieces: 2.5; expected"),
    (lambda: Maxout(2, 3, pieces=1), "Invalid maxout_pieces: 1; expected an integer >= 2"),
    (lambda: Maxout(0, 3, pieces=2), "Invalid in_features: 0; expected an integer >= 1"),
    (lambda: MLPGenerator(activation="maxout"), "Invalid activation: 'maxout'; expected one of relu, leaky_relu"),
    (lambda: MLPDiscriminator(activation="max"),
     "Invalid activation: 'max'; expected one of relu, leaky_relu, elu, silu, tanh, maxout"),
    (lambda: MLPGenerator(batch_norm="yes"), "Invalid batch_norm: 'yes'; expected true or false"),
    (lambda: MLPGenerator(init_std=0.0), "Invalid init_std: 0.0; expected a positive number, or null"),
    (lambda: MLPDiscriminator(init_std=-0.02), "Invalid init_std: -0.02; expected a positive number, or null"),
    (lambda: MLPDiscriminator(init_std=float("nan")), "Invalid init_std: nan; expected a positive number"),
])
def test_bad_values_are_one_line_errors(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["ring", "grid"])
def test_protocol_configs_build_the_reference_players(kind):
    """configs/protocol_<kind>.yaml: G 4 x [Linear 400 (no bias), BatchNorm, ReLU] -> Linear 2; D 3 x maxout
    (200 units, 5 pieces) -> Linear 1; weights N(0, 0.02^2), biases 0."""
    model = yaml.safe_load((CONFIGS / f"protocol_{kind}.yaml").read_text())["model"]
    g_args, d_args = model["generator"]["init_args"], model["discriminator"]["init_args"]
    assert model["generator"]["class_path"] == "lightning_gan.models.MLPGenerator"
    assert model["discriminator"]["class_path"] == "lightning_gan.models.MLPDiscriminator"
    assert g_args == {"latent_dim": 2, "output_dim": 2, "hidden_dim": 400, "num_layers": 4, "activation": "relu",
                      "batch_norm": True, "init_std": 0.02}
    assert d_args == {"input_dim": 2, "hidden_dim": 200, "num_layers": 3, "activation": "maxout",
                      "maxout_pieces": 5, "init_std": 0.02}
    generator, discriminator = MLPGenerator(**g_args), MLPDiscriminator(**d_args)
    assert [type(m) for m in generator.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 4 + [nn.Linear]
    assert [type(m) for m in discriminator.net] == [Maxout] * 3 + [nn.Linear]
    assert all(m.pieces == 5 for m in discriminator.net[:3])
