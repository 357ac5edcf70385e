"""AdaGAN's pieces against hand computations: beta_t and the mixture weights, the paper's data weights, the mixture
generator, and the weighted sampler (seeded, rank-consistent, resumable). The runs are in test_adagan_run.py."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_gan.adagan import MixtureGenerator, WeightedGameSampler, mixture_weights_after, next_mixture_weight
from lightning_gan.adagan.mixture import component_index
from lightning_gan.adagan.weights import density_ratios, theory_star_weights
from lightning_gan.models import MLPGenerator

# -- beta_t and the mixture weights -----------------------------------------------------------------

def _mixture(t_total: int, rule: str, constant: float = 0.5) -> list[float]:
    weights: list[float] = []
    for t in range(t_total):
        weights = mixture_weights_after(weights, next_mixture_weight(t, rule, constant))
    return weights


@pytest.mark.parametrize("components", [1, 2, 3, 5, 10])
def test_uniform_beta_gives_the_uniform_mixture(components):
    weights = _mixture(components, "uniform")
    assert len(weights) == components
    assert math.isclose(sum(weights), 1.0, rel_tol=0, abs_tol=1e-12)
    assert all(math.isclose(w, 1 / components, rel_tol=1e-12) for w in weights)


def test_constant_beta_by_hand():
    assert next_mixture_weight(0, "constant", 0.3) == 1.0  # the first component always takes weight 1
    assert _mixture(1, "constant", 0.3) == [1.0]
    two = _mixture(2, "constant", 0.3)
    three = _mixture(3, "constant", 0.3)
    assert two == pytest.approx([0.7, 0.3], abs=1e-15)
    assert three == pytest.approx([0.49, 0.21, 0.3], abs=1e-15)  # (1 - 0.3) * [0.7, 0.3] then 0.3
    assert _mixture(4, "constant", 0.5) == pytest.approx([0.125, 0.125, 0.25, 0.5], abs=1e-15)
    for weights in (two, three):
        assert math.isclose(sum(weights), 1.0, abs_tol=1e-12)


def test_beta_rules_refuse_unknown_values():
    with pytest.raises(ValueError, match=r"Invalid adagan\.beta: 'linear'"):
        next_mixture_weight(1, "linear")
    with pytest.raises(ValueError, match=r"Invalid adagan\.beta_constant: 0"):
        next_mixture_weight(1, "constant", 0.0)


# -- the data weights (Section 3.1; adagan.py _compute_data_weights_theory_star) --------------------------

def test_theory_star_weights_by_hand():
    # h sorted: 0.2, 0.6, 1.0, 3.0; beta 0.5 so N beta = 2 and 1 - beta = 0.5.
    # i = 0: lambda = (2 + 0.5 * 0.2) / 1 = 2.1 > 0.5 * 0.6 = 0.3: rejected.
    # i = 1: lambda = (2 + 0.5 * 0.8) / 2 = 1.2 > 0.5 * 1.0 = 0.5: rejected.
    # i = 2: lambda = (2 + 0.5 * 1.8) / 3 = 29/30, and 0.5 <= 29/30 <= 1.5: accepted.
    # w = (29/30 - 0.5 h)_+ / (4 * 0.5): h=0.2 -> 13/30, h=0.6 -> 10/30, h=1.0 -> 7/30, h=3.0 -> 0; sum 1.
    h = torch.tensor([1.0, 0.2, 3.0, 0.6], dtype=torch.float64)
    weights, lam = theory_star_weights(h, 0.5)
    assert weights.dtype == torch.float64
    assert lam == pytest.approx(29 / 30, abs=1e-15)
    expected = torch.tensor([7 / 30, 13 / 30, 0.0, 10 / 30], dtype=torch.float64)
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-15)


def test_theory_star_weights_last_candidate_by_hand():
    # h = 0.5, 1.0, 1.5; beta 0.5: N beta = 1.5. i = 0: 1.75 > 0.5 * 1.0; i = 1: (1.5 + 0.75) / 2 = 1.125 > 0.75;
    # i = 2 (the last): (1.5 + 1.5) / 3 = 1.0 >= 0.75: accepted. w = (1 - 0.5 h) / 1.5 = 1/2, 1/3, 1/6.
    weights, lam = theory_star_weights(torch.tensor([1.5, 0.5, 1.0], dtype=torch.float64), 0.5)
    assert lam == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(weights, torch.tensor([1 / 6, 1 / 2, 1 / 3], dtype=torch.float64), rtol=0, atol=1e-15)


def test_theory_star_weights_with_a_third_by_hand():
    # beta 1/3 (the uniform rule's second step... third component), h = 0, 0, 4: N beta = 1, 1 - beta = 2/3.
    # i = 0: lambda = 1 + 0 = 1 > (2/3) * 0 = 0 (upper bound h_(1) = 0): rejected.
    # i = 1: lambda = (1 + 0) / 2 = 1/2 <= (2/3) * 4: accepted. w = (1/2 - 0) / 1 = 1/2, 1/2, and 0 for h = 4.
    weights, lam = theory_star_weights(torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64), 1 / 3)
    assert lam == pytest.approx(0.5, abs=1e-15)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), rtol=0, atol=1e-15)


def test_no_usable_lambda_gives_uniform_weights():
    # beta = 1e-18: 1 - beta rounds to 1 and N beta = 2e-18 is below half an ulp of 0.1, so every candidate lambda
    # equals 0.1 = (1 - beta) h_i and every weight (lambda - (1 - beta) h_i)_+ is 0: the reference's fallback.
    h = torch.full((2,), 0.1, dtype=torch.float64)
    assert (1.0 - 1e-18) == 1.0 and (2e-18 + 0.1) == 0.1  # the float facts the case rests on
    weights, lam = theory_star_weights(h, 1e-18)
    assert lam is None
    torch.testing.assert_close(weights, torch.full((2,), 0.5, dtype=torch.float64), rtol=0, atol=0)


def test_density_ratios_follow_the_reference_formula():
    p = torch.tensor([0.5, 0.8, 0.0, 1.0])
    h = density_ratios(p)
    expected = torch.tensor([0.5 / (0.5 + 1e-8), 0.2 / (0.8 + 1e-8), 1 / 1e-8, 0.0], dtype=torch.float64)
    torch.testing.assert_close(h, expected, rtol=1e-7, atol=0)  # p = 0.8 is a float32 input


def test_theory_star_weights_refuse_bad_input():
    with pytest.raises(ValueError, match="Invalid beta"):
        theory_star_weights(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="Invalid density ratios"):
        theory_star_weights(torch.tensor([1.0, -1.0]), 0.5)


# -- the mixture generator ---------------------------------------------------------------------------

def _generator(seed: int) -> MLPGenerator:
    torch.manual_seed(seed)
    return MLPGenerator(latent_dim=3, output_dim=2, hidden_dim=16, num_layers=2, activation="silu")


def test_a_mixture_of_identical_components_gives_the_components_samples():
    component = _generator(0)
    mixture = MixtureGenerator(component, [0.2, 0.3, 0.5])
    for slot in mixture.components:
        slot.load_state_dict(component.state_dict())
    z = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    assert mixture.latent_dim == 4
    assert set(component_index(z[:, -1], mixture.weights).tolist()) == {0, 1, 2}  # every component is used
    with torch.no_grad():
        torch.testing.assert_close(mixture(z), component(z[:, :-1]), rtol=1e-6, atol=1e-6)


def test_a_mixture_of_one_component_is_that_component_latents_included():
    component = _generator(0)
    mixture = MixtureGenerator(component, [1.0])
    mixture.components[0].load_state_dict(component.state_dict())
    z = torch.randn(64, component.latent_dim, generator=torch.Generator().manual_seed(3))
    assert mixture.latent_dim == component.latent_dim  # no picking coordinate: T = 1 samples as the plain run
    with torch.no_grad():
        assert torch.equal(mixture(z), component(z))


def test_each_sample_comes_from_the_component_its_last_latent_picks():
    components = [_generator(seed) for seed in range(3)]
    mixture = MixtureGenerator(components[0], [0.5, 0.25, 0.25])
    for slot, component in zip(mixture.components, components):
        slot.load_state_dict(component.state_dict())
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = mixture(z)
        for row, latent in zip(out, z):
            phi = 0.5 * (1 + math.erf(float(latent[-1]) / math.sqrt(2)))  # by hand: cumulative 0.5, 0.75, 1
            k = 0 if phi < 0.5 else 1 if phi < 0.75 else 2
            torch.testing.assert_close(row, components[k](latent[None, :-1])[0], rtol=1e-5, atol=1e-6)


def test_components_are_picked_with_the_mixture_weights():
    weights = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    u = torch.randn(200_000, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(component_index(u, weights), minlength=3).double() / len(u)
    torch.testing.assert_close(counts, weights, rtol=0, atol=5e-3)


def test_mixture_refuses_bad_weights():
    with pytest.raises(ValueError, match="Invalid mixture weights"):
        MixtureGenerator(_generator(0), [0.0, 0.0])
    with pytest.raises(ValueError, match="Invalid mixture weights"):
        MixtureGenerator(_generator(0), [-0.5, 1.5])


# -- the weighted sampler ------------------------------------------------------------------------------

def _weights(n: int = 60) -> torch.Tensor:
    w = torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w[::5] = 0.0  # some points never drawn
    return w


def _indices(sampler: WeightedGameSampler, passes: int = 1) -> list[int]:
    return [i for _ in range(passes) for i in sampler]


def test_weighted_sampling_is_seeded_and_follows_the_weights():
    w = _weights()
    a = _indices(WeightedGameSampler(60, 1, 0, w, batch_size=8, seed=5), passes=2)
    b = _indices(WeightedGameSampler(60, 1, 0, w, batch_size=8, seed=5), passes=2)
    c = _indices(WeightedGameSampler(60, 1, 0, w, batch_size=8, seed=6), passes=2)
    assert a == b and a != c
    assert len(a) == 2 * (60 // 8) * 8
    assert a[:len(a) // 2] != a[len(a) // 2:]  # each pass draws anew
    assert not {i for i in a if w[i] == 0}  # zero weight: never drawn
    for k in range(0, len(a), 8):  # each minibatch without replacement
        assert len(set(a[k:k + 8])) == 8


def test_heavy_points_are_drawn_more_often():
    w = torch.ones(100, dtype=torch.float64)
    w[:10] = 50.0
    sampler = WeightedGameSampler(100, 1, 0, w, batch_size=20, seed=0)
    drawn = torch.tensor(_indices(sampler, passes=20))
    heavy = (drawn < 10).double().mean()
    assert heavy > 0.4  # uniform sampling would give 0.1


def test_two_ranks_together_draw_the_one_rank_sequence():
    w = _weights()
    one = _indices(WeightedGameSampler(60, 1, 0, w, batch_size=8, seed=7), passes=2)
    ranks = [_indices(WeightedGameSampler(60, 2, r, w, batch_size=4, seed=7), passes=2) for r in range(2)]
    assert ranks[0] == one[0::2] and ranks[1] == one[1::2]
    for k in range(0, len(one), 8):  # the ranks' k-th micro-batches together are the one-rank k-th batch
        assert set(ranks[0][k // 2:k // 2 + 4]) | set(ranks[1][k // 2:k // 2 + 4]) == set(one[k:k + 8])


@pytest.mark.parametrize("stop", [5, 30, 61])  # mid-pass, later in the pass, in the second pass
def test_a_resumed_sampler_continues_the_same_sequence(stop):
    w = _weights()
    uninterrupted = _indices(WeightedGameSampler(60, 2, 1, w, batch_size=4, seed=8), passes=3)
    first = WeightedGameSampler(60, 2, 1, w, batch_size=4, seed=8)
    seen: list[int] = []
    iterator = iter(first)
    while len(seen) < stop:
        try:
            seen.append(next(iterator))
        except StopIteration:
            iterator = iter(first)
    state = first.state_dict()
    resumed = WeightedGameSampler(60, 2, 1, w, batch_size=4, seed=8)
    resumed.load_state_dict(state)
    rest = _indices(resumed, passes=3 - stop // len(first))
    assert seen + rest == uninterrupted


def test_weights_that_vanish_are_refused():
    w = torch.zeros(60, dtype=torch.float64)
    w[:7] = 1.0
    with pytest.raises(ValueError, match=r"Invalid data weights: only 7 .* fewer than the 8 .*weights that vanish"):
        WeightedGameSampler(60, 2, 0, w, batch_size=4)
    WeightedGameSampler(60, 1, 0, w, batch_size=7)  # 7 nonzero fill a block of 7
    with pytest.raises(ValueError, match="Invalid data weights: 59 values for 60"):
        WeightedGameSampler(60, 1, 0, w[:59], batch_size=4)
