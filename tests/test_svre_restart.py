"""SVRE's restarts as in the paper's code: the live players take their uniform averages, which restart from there."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from gan_fixtures import make_data, make_module, make_trainer, state_of
from lightning_gan.averaging import PlayerAverages
from lightning_gan.variance_reduction import SVREConfig


def _set(player: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in player.parameters():
            p.fill_(value)


def _values(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in module.state_dict().values()]


def test_restart_moves_the_player_to_the_average_and_restarts_the_average_there():
    player = nn.Linear(3, 2)
    averages = PlayerAverages(player, ema_decay=0.9)
    for value in (1.0, 2.0, 6.0):
        _set(player, value)
        averages.update(player)
    ema_before = _values(averages.get("ema"))
    averages.restart(player)
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in player.parameters())  # (1 + 2 + 6) / 3
    assert averages.uniform.n_averaged.item() == 1
    assert all(torch.equal(a, p) for a, p in zip(_values(averages.get("uniform")), _values(player)))
    assert all(torch.equal(a, b) for a, b in zip(_values(averages.get("ema")), ema_before))  # the EMA runs on
    _set(player, 5.0)
    averages.update(player)  # the average now counts the restarted point once: (3 + 5) / 2
    assert all(torch.equal(p, torch.full_like(p, 4.0)) for p in averages.get("uniform").parameters())


def test_restart_before_the_first_update_keeps_the_player():
    player = nn.Linear(3, 2)
    averages = PlayerAverages(player, ema_decay=None)
    _set(player, 7.0)  # moved after the averages were built: the average holds no iterate yet
    averages.restart(player)
    assert all(torch.equal(p, torch.full_like(p, 7.0)) for p in player.parameters())
    assert averages.uniform.n_averaged.item() == 1
    assert all(torch.equal(p, torch.full_like(p, 7.0)) for p in averages.get("uniform").parameters())


def test_restart_without_a_uniform_average_is_refused():
    with pytest.raises(ValueError, match="Invalid uniform_average: false"):
        PlayerAverages(nn.Linear(2, 2), uniform=False).restart(nn.Linear(2, 2))
    module = make_module("svre", svre=SVREConfig(snapshot_every=2, restart_probability=1.0))
    with pytest.raises(ValueError, match="average_discriminator: true"):
        make_trainer(3).fit(module, make_data())


def _spy_restarts(module) -> list[dict]:
    """Wrap ``module.restart_from_averages``: record the averages before and the players and averages after."""
    records, original = [], module.restart_from_averages

    def restart() -> None:
        before = [_values(a.get("uniform")) for a in (module.generator_averages, module.discriminator_averages)]
        original()
        records.append({
            "averages_before": before,
            "players": [_values(p) for p in (module.generator, module.discriminator)],
            "averages": [_values(a.get("uniform")) for a in (module.generator_averages,
                                                               module.discriminator_averages)],
            "n_averaged": [a.uniform.n_averaged.item() for a in (module.generator_averages,
                                                                  module.discriminator_averages)],
        })

    module.restart_from_averages = restart
    return records


def test_trainer_restart_resets_both_averages_to_the_restarted_point():
    module = make_module("svre", svre=SVREConfig(snapshot_every=5, restart_probability=1.0),
                         average_discriminator=True)
    records = _spy_restarts(module)
    make_trainer(12).fit(module, make_data())
    assert len(records) == 3  # iterations 0, 5, 10
    for record in records[1:]:
        for before, player, average, n in zip(record["averages_before"], record["players"], record["averages"],
                                              record["n_averaged"]):
            assert all(torch.equal(b, p) for b, p in zip(before, player))  # the player took the average
            assert all(torch.equal(a, p) for a, p in zip(average, player))  # the average restarted there
            assert n == 1
    # the snapshot of iteration 10 is the restarted point
    snapshot = [_values(module.svre.snapshot_generator), _values(module.svre.snapshot_discriminator)]
    for taken, restarted in zip(snapshot, records[-1]["players"]):
        assert all(torch.equal(a, b) for a, b in zip(taken, restarted))
    # since the last restart the averages counted it and iterations 10 and 11
    assert module.generator_averages.uniform.n_averaged.item() == 3
    assert module.discriminator_averages.uniform.n_averaged.item() == 3


def test_svre_resume_across_restarts_equals_never_stopping(tmp_path):
    n, kwargs = 10, dict(svre=SVREConfig(snapshot_probability=0.3, restart_probability=0.6),
                         average_discriminator=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=n, save_top_k=-1)
    uninterrupted = make_module("svre", **kwargs)
    restarts = _spy_restarts(uninterrupted)
    make_trainer(2 * n, callbacks=[checkpoint], enable_checkpointing=True).fit(uninterrupted, make_data())
    (saved,) = tmp_path.glob(f"*step={n}.ckpt")
    resumed = make_module("svre", init_seed=99, **kwargs)
    restarts_after = _spy_restarts(resumed)
    make_trainer(2 * n).fit(resumed, make_data(), ckpt_path=saved)
    assert len(restarts) > len(restarts_after) >= 1  # restarts before and after the checkpoint
    expected, actual = state_of(uninterrupted), state_of(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
