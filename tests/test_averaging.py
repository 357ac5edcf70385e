"""The averages of a player: uniform = torch's running mean (multi-tensor), EMA as torch's, BatchNorm buffers kept."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_gan.averaging import PlayerAverages, recompute_batchnorm


def player():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_uniform_and_ema_match_torch_swa_utils_including_buffers():
    live = player()
    ours = PlayerAverages(live, uniform=True, ema_decay=0.9)
    uniform = AveragedModel(live, use_buffers=True)
    ema = AveragedModel(live, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(6):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        live(torch.randn(8, 3))
        ours.update(live)
        uniform.update_parameters(live)
        ema.update_parameters(live)
    for mine, reference in ((ours.uniform, uniform), (ours.ema, ema)):
        for (key, a), b in zip(mine.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=key)
    assert not any(p.requires_grad for p in ours.parameters())


def test_invalid_ema_decay_is_named():
    with pytest.raises(ValueError, match="Invalid ema_decay: 1.0"):
        PlayerAverages(player(), ema_decay=1.0)


def test_recompute_batchnorm_gives_standing_statistics_of_the_latents():
    generator = player()
    latents = [torch.randn(64, 3) + 2.0 for _ in range(4)]
    fresh = recompute_batchnorm(generator, latents)
    with torch.no_grad():
        hidden = torch.cat([generator[0](z) for z in latents])
    torch.testing.assert_close(fresh[1].running_mean, hidden.mean(0), rtol=1e-5, atol=1e-5)
    assert not fresh.training and generator[1].running_mean.abs().max() < 1e-6  # the original is untouched
