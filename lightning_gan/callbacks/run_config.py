"""RunConfigInCheckpoint: the run's resolved config travels inside each checkpoint it writes.

``evaluate`` and ``sample`` rebuild the players from a config; the newest ``version_<k>/config.yaml`` of a folder may
belong to another run, and a copied checkpoint has no folder at all. The config is stored as a plain YAML string, so
``torch.load(weights_only=True)`` still reads the checkpoint.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

__all__ = ["CONFIG_KEY", "RunConfigInCheckpoint"]

#: Checkpoint entry holding the run's config (the text of its ``config.yaml``).
CONFIG_KEY = "lightning_gan_config"
#: Keep explicit nulls (e.g. ``ema_decay: null``), as config.yaml does; skip_none is deprecated since jsonargparse 4.49.
_KEEP_NULLS = ({"skip_unset": False} if tuple(map(int, version("jsonargparse").split(".")[:2])) >= (4, 49)
               else {"skip_none": False})


class RunConfigInCheckpoint(SaveConfigCallback):
    """Writes ``config.yaml`` as LightningCLI does, and the same YAML into every checkpoint under ``CONFIG_KEY``."""

    _text: str | None = None

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._text is None:  # dumped once: the config does not change during a run
            self._text = self.parser.dump(self.config, **_KEEP_NULLS)
        checkpoint[CONFIG_KEY] = self._text
