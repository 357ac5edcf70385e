"""``lightning-gan fit --help`` is short enough to read and offers the project's players, not every torch module;
a player of the user's own (any ``nn.Module``) is still accepted by its class_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from lightning_gan.cli import GANCLI

REPO = Path(__file__).resolve().parents[1]
TOY_RING_TINY = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),
]

#: ``fit --help`` was 869 lines at 80 columns before (2,415 with jsonargparse's default formatter, listing ~460
#: torch classes as players); 500 with the diagnostics group.
MAX_HELP_LINES = 560


def _help(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "lightning_gan", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_fit_help_is_short_and_lists_the_projects_players():
    text = _help("fit", "--help")
    assert len(text.splitlines()) < MAX_HELP_LINES, len(text.splitlines())
    flat = " ".join(text.split())
    for player in ("MLPGenerator", "DCGANGenerator", "ResNetGenerator32", "MLPDiscriminator", "DCGANDiscriminator",
                   "ResNetDiscriminator32"):
        assert f"lightning_gan.models.{player}" in flat, player
    for torch_class in ("torch.nn.Linear", "torch.nn.Sequential", "torch.ao.", "torch_fidelity"):
        assert torch_class not in flat, torch_class
    assert text.startswith("usage: lightning-gan [options] fit [-h] [-c CONFIG]")
    assert "--model.generator.help DCGANGenerator" in text  # where the players' own arguments are
    assert "(default: 1000)" in flat  # checkpoint.every_n_train_steps: the defaults are shown


def test_a_players_own_help_comes_by_its_short_name():
    text = _help("fit", "--model.generator.help", "DCGANGenerator")
    assert "--model.generator.base_width" in text and "--model.generator.latent_dim" in text


class LinearCritic(nn.Module):
    """A player of the user's own: an ``nn.Module`` that subclasses nothing the project defines."""

    def __init__(self, input_dim: int = 2) -> None:
        super().__init__()
        self.score = nn.Linear(input_dim, 1)

    def forward(self, x):
        return self.score(x).squeeze(-1)


def test_any_torch_module_is_still_a_player(tmp_path, cli_process_state):
    cli = GANCLI(args=["--config", str(TOY_RING_TINY), f"--trainer.default_root_dir={tmp_path}",
                       "--model.discriminator=test_help.LinearCritic"], run=False)
    assert type(cli.model.discriminator).__name__ == "LinearCritic"
