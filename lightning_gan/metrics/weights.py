"""Offline Inception weights: find and check the file torch-fidelity needs *before* any sample is generated.

torch-fidelity's ``FeatureExtractorInceptionV3`` (also behind torchmetrics' FID/KID/IS) loads
``feature_extractor_weights_path`` if given, else calls ``torch.hub.load_state_dict_from_url(URL)``,
which reads ``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``
(``$TORCH_HOME/hub/checkpoints/...``, ``TORCH_HOME`` defaulting to ``~/.cache/torch``) and downloads it
when absent. Offline that download dies with a bare ``URLError`` after all samples were generated, so
we resolve the file first, in this order:

1. an explicit path (argument / config field ``inception_weights``),
2. the environment variable ``LIGHTNING_GAN_INCEPTION_WEIGHTS``,
3. torch hub's cache location above,
4. a download into that cache, only when ``allow_download=True``,

and otherwise raise :class:`InceptionWeightsNotFoundError` naming the file, where torch-fidelity looks for
it and how to pass it. The resolved path is then always given to torch-fidelity explicitly, so nothing
downloads behind our back.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

__all__ = [
    "ENV_INCEPTION_WEIGHTS",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "InceptionWeightsNotFoundError",
    "check_inception_weights",
    "inception_cache_path",
    "resolve_inception_weights",
]

INCEPTION_URL: str = URL_INCEPTION_V3
INCEPTION_FILENAME: str = INCEPTION_URL.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
ENV_INCEPTION_WEIGHTS = "LIGHTNING_GAN_INCEPTION_WEIGHTS"
_HASH_PREFIX = INCEPTION_FILENAME.rsplit("-", 1)[-1].split(".")[0]  # torch hub's sha256-prefix naming

# A few entries of torch-fidelity's InceptionV3 state dict (566 entries in all; torch-fidelity's strict
# load_state_dict checks the rest): enough to tell "some other checkpoint" from the right file.
_SENTINELS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The Inception weights file is neither where we were told nor in torch hub's cache, and was not downloaded."""


def inception_cache_path() -> Path:
    """Where torch-fidelity (through ``torch.hub.load_state_dict_from_url``) looks for the weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _how_to_pass() -> str:
    return (
        f"Either copy {INCEPTION_FILENAME} (from {INCEPTION_URL}) to {inception_cache_path()} (torch hub's cache: "
        f"$TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to ~/.cache/torch), or pass its path with the "
        f"`inception_weights` argument / config field, or set the environment variable "
        f"{ENV_INCEPTION_WEIGHTS}=/path/to/{INCEPTION_FILENAME}. On digit data a digit classifier "
        f"(extractor 'mnist', 'fashion-mnist' or 'digits') needs no Inception weights."
    )


def _missing(where: str) -> InceptionWeightsNotFoundError:
    return InceptionWeightsNotFoundError(
        f"Inception weights not found: {where}. FID, KID and IS with the Inception network need "
        f"{INCEPTION_FILENAME}, torch-fidelity's InceptionV3 converted from the TensorFlow 2015-12-05 graph. "
        f"torch-fidelity looks for it at {inception_cache_path()} and would otherwise download it from "
        f"{INCEPTION_URL}. {_how_to_pass()}"
    )


def check_inception_weights(path: str | Path) -> Path:
    """Checks that ``path`` is a readable Inception state dict (e.g. not truncated); returns it as a Path.

    Raises:
        InceptionWeightsNotFoundError: ``path`` is not a file.
        ValueError: the file cannot be read as a PyTorch state dict, or lacks the InceptionV3 entries.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(f"{path} is not a file")
    try:  # weights_only: the real file holds only tensors, and an unknown file must not run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Invalid Inception weights file {path}: it cannot be read as a PyTorch state dict "
            f"({type(error).__name__}: {error}). Expected {INCEPTION_FILENAME} from {INCEPTION_URL}; a truncated "
            f"download gives this error: delete the file and copy it again."
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"Invalid Inception weights file {path}: it holds a {type(state).__name__}, expected the "
                         f"state dict {INCEPTION_FILENAME} from {INCEPTION_URL}")
    wrong = [
        f"{key} ({'missing' if key not in state else tuple(state[key].shape)}, expected {shape})"
        for key, shape in _SENTINELS.items()
        if key not in state or not torch.is_tensor(state[key]) or tuple(state[key].shape) != shape
    ]
    if wrong:
        raise ValueError(f"Invalid Inception weights file {path}: not torch-fidelity's InceptionV3 state dict "
                         f"({'; '.join(wrong)}); expected {INCEPTION_FILENAME} from {INCEPTION_URL}")
    return path


def _download(target: Path) -> None:
    """Downloads into torch hub's cache with its sha256-prefix check; any failure becomes our not-found error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(target), hash_prefix=_HASH_PREFIX, progress=False)
    except Exception as error:  # noqa: BLE001 - URLError, timeouts, hash mismatch: all mean "not downloadable"
        raise _missing(f"downloading {INCEPTION_URL} failed ({type(error).__name__}: {error})") from error


def resolve_inception_weights(path: str | Path | None = None, *, allow_download: bool = False) -> Path:
    """The Inception weights file to hand to torch-fidelity, checked, or an error before any work is done.

    Args:
        path: Explicit file (argument / config field ``inception_weights``); when given it must exist:
            no silent fallback to the environment or the cache.
        allow_download: When the file is found nowhere, download it into torch hub's cache now (online
            machines only). Off by default: clusters are often offline.

    Raises:
        InceptionWeightsNotFoundError: the file is not at ``path``, at ``$LIGHTNING_GAN_INCEPTION_WEIGHTS``
            or in torch hub's cache, and downloading is off or failed; the message says how to provide it.
        ValueError: the file found is not a valid Inception state dict.
    """
    if path is not None and str(path) != "":
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise _missing(f"the path given, {candidate}, is not a file")
        return check_inception_weights(candidate)
    from_env = os.environ.get(ENV_INCEPTION_WEIGHTS, "")
    if from_env:
        candidate = Path(from_env).expanduser()
        if not candidate.is_file():
            raise _missing(f"{ENV_INCEPTION_WEIGHTS}={from_env} is not a file")
        return check_inception_weights(candidate)
    cached = inception_cache_path()
    if cached.is_file():
        return check_inception_weights(cached)
    if not allow_download:
        raise _missing(f"no path given, {ENV_INCEPTION_WEIGHTS} is unset, {cached} does not exist and "
                       f"downloading is off (allow_download=False)")
    _download(cached)
    return check_inception_weights(cached)
