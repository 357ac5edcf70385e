"""The help of ``lightning-gan`` and ``lightning-gan fit``: short enough to read, the project's players as choices.

jsonargparse's default help lists every importable subclass of an argument's type: for the players, typed
``nn.Module`` so that any module works, that is ~460 torch and torch-fidelity classes (2,400 lines of ``fit --help``)
and not the project's own. :class:`GANHelpFormatter` instead

- names the players of :mod:`lightning_gan.models` for ``model.generator`` / ``model.discriminator`` (any
  ``torch.nn.Module`` subclass is still accepted, by its ``class_path``), and lists known subclasses only for the
  project's groups (``model.*``, ``data``), not Lightning's (loggers, callbacks, strategies, profilers, plugins);
- cuts the help of Lightning's own options (``trainer.*``, ``checkpoint.*`` but ``keep_previous``, ``ckpt_path``,
  ``weights_only``) to its first sentence: the rest is Lightning's documentation, a search away;
- shows each option's default (``required`` for the players), not its Python type;
- writes the subcommand's usage as one line instead of one line per option (~150 lines), and says once, in
  :data:`FIT_DESCRIPTION`, what the per-group ``--<group> CONFIG`` and per-class ``--<key>.help CLASS`` options do
  instead of listing ~20 of them;
- keeps descriptions and epilogs as written (what ``argparse.RawDescriptionHelpFormatter`` does).
"""

from __future__ import annotations

import re
from argparse import SUPPRESS, Action
from collections.abc import Iterable
from typing import Any

from jsonargparse import ActionConfigFile, DefaultHelpFormatter
from torch import nn

from lightning_gan import models

__all__ = ["FIT_DESCRIPTION", "GANHelpFormatter", "player_choices"]

#: The description of ``lightning-gan fit --help`` (Lightning's would be ``Runs the full optimization routine.``).
FIT_DESCRIPTION = """\
Train (or resume, with --ckpt_path last) a GAN as a two-player game. Values come from the config files (-c) and the
command line, later ones winning; --print_config shows the result. Every group (--trainer, --model, --samples, ...)
also takes a file of its own: --model model.yaml. An option that takes a class (model.generator, model.discriminator,
model.loss, data, trainer.logger, trainer.callbacks, ...) lists that class's arguments with --<option>.help NAME:
  lightning-gan fit --model.generator.help DCGANGenerator"""

#: Options whose help is Lightning's docstring, cut to its first sentence (``checkpoint.keep_previous`` is ours).
_BRIEF_PREFIXES = ("trainer.", "checkpoint.", "ckpt_path", "weights_only", "seed_everything")
_FULL = ("checkpoint.keep_previous",)
#: Groups whose known subclasses are the project's, worth listing.
_SUBCLASS_PREFIXES = ("model.", "data")
#: Usage lines for parsers with more options than this are written as one line.
_SHORT_USAGE_OVER = 20
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\"\]]\.)\s+(?=[A-Z`(\"])")


def player_choices(role: str) -> list[str]:
    """``lightning_gan.models.<Name>`` of the project's generators (``role="generator"``) or discriminators."""
    word = {"generator": "Generator", "discriminator": "Discriminator"}[role]
    return [f"lightning_gan.models.{name}" for name in models.__all__ if word in name]


def _first_sentence(text: str) -> str:
    """The first sentence of ``text`` that is not only about the default (the formatter shows that)."""
    text = " ".join(text.split())
    while True:
        match = _SENTENCE_END.search(text)
        sentence = text[:match.start()] if match else text
        if not (match and sentence.startswith(("Defaults to", "Default:"))):
            return "" if sentence.startswith(("Defaults to", "Default:")) else sentence
        text = text[match.end():]


class GANHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, shortened for ``lightning-gan`` (see the module's docstring)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))

    def add_usage(self, usage: str | None, actions: Iterable[Action], *args: Any, **kwargs: Any) -> None:
        actions = list(actions)
        if usage is None and len(actions) > _SHORT_USAGE_OVER:
            usage = "%(prog)s [-h] [-c CONFIG] [--print_config[=flags]] [--KEY VALUE ...]"
        super().add_usage(usage, actions, *args, **kwargs)

    def add_argument(self, action: Action) -> None:
        """Leave out the per-group config options and the per-class help options (FIT_DESCRIPTION names them)."""
        if action.dest.endswith(".help") or (isinstance(action, ActionConfigFile) and action.dest != "config"):
            return
        super().add_argument(action)

    def _get_help_string(self, action: Action) -> str:
        if not action.option_strings:  # subcommands
            return action.help or ""
        if getattr(action, "_jsonargparse_preexpanded_help", False) or isinstance(action, ActionConfigFile) \
                or action.help == SUPPRESS or action.dest.endswith(".help") or action.dest == "help":
            return super()._get_help_string(action)
        text = action.help or ""
        dest = action.dest
        lightnings = dest.startswith(_BRIEF_PREFIXES) and dest not in _FULL
        if lightnings:
            text = _first_sentence(text)
        notes = []
        if action.required:
            notes.append("required")
        elif "%(default)" not in text and action.default != SUPPRESS and not (lightnings and action.default is None):
            notes.append("default: %(default)s")  # a Lightning option's None leaves the value to Lightning
        typehint = getattr(action, "_typehint", None)
        if typehint is nn.Module and dest.rsplit(".", 1)[-1] in ("generator", "discriminator"):
            notes.append("the project's: " + ", ".join(player_choices(dest.rsplit(".", 1)[-1]))
                         + "; or the class_path of any torch.nn.Module subclass")
        elif dest.startswith(_SUBCLASS_PREFIXES) and hasattr(action, "extra_help"):
            extra = action.extra_help().removeprefix(", ")
            if extra:
                notes.append(extra)
        return text + (" (" + "; ".join(notes) + ")" if notes else "")
