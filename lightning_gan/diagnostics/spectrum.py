"""The spectrum of the game Jacobian J = dF/dw at one point, by Jacobian-vector products and Arnoldi (ARPACK).

F(w) = (grad_theta L_G, grad_phi L_D) is the game vector field (:mod:`lightning_gan.game.field`); its Jacobian

    J = [[ grad^2_theta L_G,       grad_phi grad_theta L_G ],
         [ grad_theta grad_phi L_D, grad^2_phi L_D          ]]

is not symmetric. Its eigenvalues say how simultaneous gradient dynamics behave near the point: a large imaginary
part relative to the real part means rotation (Mescheder et al., "The Numerics of GANs", NeurIPS 2017), a negative
real part local instability. The diagonal blocks are the players' own Hessians, which say whether each player sits at
a local minimum of its own loss (Berard et al., "A Closer Look at the Optimization Landscapes of Generative
Adversarial Networks", ICLR 2020).

How J v is computed (the "double vjp" trick). The field is built once with a graph (``game.graph_field(sample)``);
with a dummy cotangent u (zeros, requiring grad) ``g(u) = J^T u`` is built once more with a graph; g is linear in u,
so ``d <g(u), v> / du = J v``. Each matvec is then one backward pass through the retained graph of g: no forward
pass is repeated, whatever the number of matvecs ARPACK asks for.

Works on any object with ``players`` (modules) and ``graph_field(sample)`` (a list per player of gradients with a
graph): the toys of :mod:`lightning_gan.game.toys` and :class:`~lightning_gan.game.gan.GANGame`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["GameJacobian", "Spectrum", "check_spectrum_request", "game_jacobian_eigenvalues", "parameter_count"]


def _players_parameters(game: Any) -> list[list[Tensor]]:
    """Each player's parameters in the order of its part of F (those that require grad)."""
    return [[p for p in player.parameters() if p.requires_grad] for player in game.players]


def parameter_count(game: Any) -> int:
    """n: the dimension of w = (theta, phi), hence the size of J."""
    return sum(p.numel() for params in _players_parameters(game) for p in params)


def check_spectrum_request(k: int, n: int, field_name: str = "diagnostics.k") -> None:
    """Refuse k < 1 and k > n (more eigenvalues than J has) in one line naming ``field_name``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid {field_name}: {k!r}; expected an integer >= 1 (eigenvalues per estimate)")
    if k > n:
        raise ValueError(f"Invalid {field_name}: {k}; the game has only {n} parameters, so its Jacobian has {n} "
                         f"eigenvalues: expected an integer <= {n}")


class GameJacobian:
    """J (and its diagonal blocks) at the players' current point on one sample, as matrix-free products.

    Build it, use it, drop it: it holds the graph of F and of J^T u (the memory of about three backward passes).

    Args:
        game: an object with ``players`` and ``graph_field(sample)``.
        sample: what ``graph_field`` takes (a list of ``(real, z)`` micro-batches for a GAN, None for most toys).
    """

    def __init__(self, game: Any, sample: Any = None) -> None:
        self.params = [p for params in _players_parameters(game) for p in params]
        self.sizes = [sum(p.numel() for p in params) for params in _players_parameters(game)]
        self.n = sum(self.sizes)
        first = self.params[0]
        self.dtype, self.device = first.dtype, first.device
        with torch.enable_grad():
            fields = [g for grads in game.graph_field(sample) for g in grads]
            if len(fields) != len(self.params):
                raise ValueError(f"graph_field returned {len(fields)} tensors for {len(self.params)} parameters")
            self.field = torch.cat([f.detach().reshape(-1) for f in fields])
            live = [(f, p) for f, p in zip(fields, self.params) if f.requires_grad]  # others: constant, no J rows
            self._u = [torch.zeros_like(f, requires_grad=True) for f, _ in live]
            self._u_index = [i for i, (f, _) in enumerate(zip(fields, self.params)) if f.requires_grad]
            if live:
                jt_u = torch.autograd.grad([f for f, _ in live], self.params, grad_outputs=self._u,
                                           create_graph=True, allow_unused=True)
                self._jt_u = [(g, p) for g, p in zip(jt_u, self.params) if g is not None and g.requires_grad]
            else:
                self._jt_u = []
        self._offsets = np.cumsum([0] + [p.numel() for p in self.params])
        self.matvecs = 0

    def _split(self, v: np.ndarray) -> list[Tensor]:
        t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=self.dtype).to(self.device)
        return [t[a:b].view_as(p) for a, b, p in zip(self._offsets[:-1], self._offsets[1:], self.params)]

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """J v for a flat real vector v (float64 in, float64 out; computed in the players' dtype)."""
        self.matvecs += 1
        out = np.zeros(self.n, dtype=np.float64)
        if not self._jt_u or not self._u:
            return out
        pieces = self._split(v)
        index = {id(p): i for i, p in enumerate(self.params)}
        with torch.enable_grad():
            jv = torch.autograd.grad([g for g, _ in self._jt_u], self._u,
                                     grad_outputs=[pieces[index[id(p)]] for _, p in self._jt_u],
                                     retain_graph=True, allow_unused=True)
        for i, g in zip(self._u_index, jv):
            if g is not None:
                out[self._offsets[i]:self._offsets[i + 1]] = g.detach().reshape(-1).double().cpu().numpy()
        return out

    def block_matvec(self, player: int, v: np.ndarray) -> np.ndarray:
        """H_i v: the product with player ``player``'s own Hessian (the i-th diagonal block of J)."""
        start = sum(self.sizes[:player])
        full = np.zeros(self.n, dtype=np.float64)
        full[start:start + self.sizes[player]] = np.ravel(v)
        return self.matvec(full)[start:start + self.sizes[player]]

    def operator(self) -> Any:
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.n, self.n), matvec=self.matvec, dtype=np.float64)

    def block_operator(self, player: int) -> Any:
        from scipy.sparse.linalg import LinearOperator

        size = self.sizes[player]
        return LinearOperator((size, size), matvec=lambda v: self.block_matvec(player, v), dtype=np.float64)

    def dense(self) -> np.ndarray:
        """The full n x n J, column by column (n matvecs): for small games only."""
        eye = np.eye(self.n)
        return np.stack([self.matvec(eye[:, j]) for j in range(self.n)], axis=1)


@dataclass
class Spectrum:
    """What one estimate found.

    Attributes:
        top: the k eigenvalues of J of largest modulus, largest first.
        rotational: up to k non-real eigenvalues with the largest |Im| / |Re| among those computed (``top``, plus
            ARPACK's k of largest imaginary part, ``which='LI'``, when ``rotation`` was asked for), largest ratio
            first; a purely imaginary eigenvalue has ratio inf. Empty when all of them are real.
        hessians: per player, its own Hessian's k eigenvalues of largest magnitude (largest first; fewer when the
            player has fewer parameters), or None when not asked for.
        method: ``"arpack"`` or ``"dense"`` (n <= k + 1, where ARPACK cannot run: the full J and numpy.linalg.eigvals).
        n: the number of parameters (size of J).
        matvecs: Jacobian-vector products used (``extra["matvecs"]``: per ARPACK run).
        converged: False when ARPACK stopped at maxiter (then the eigenvalues that had converged are returned).
    """

    top: np.ndarray
    rotational: np.ndarray
    hessians: list[np.ndarray] | None = None
    method: str = "arpack"
    n: int = 0
    matvecs: int = 0
    converged: bool = True
    field_norm: float = float("nan")
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Scalars to log: max |lambda|, max and min real part, max |Im/Re| (over ``top`` and ``rotational``)."""
        allv = np.concatenate([self.top, self.rotational])
        out = {
            "eig_max_abs": float(np.max(np.abs(self.top))) if self.top.size else float("nan"),
            "eig_max_real": float(np.max(allv.real)) if allv.size else float("nan"),
            "eig_min_real": float(np.min(allv.real)) if allv.size else float("nan"),
            "eig_max_imag_ratio": float(np.max(_ratio(allv))) if allv.size else float("nan"),
        }
        if self.hessians is not None:
            for name, values in zip(("generator", "discriminator"), self.hessians):
                if values.size:
                    out[f"hessian_{name}_max"] = float(np.max(values))
                    out[f"hessian_{name}_min"] = float(np.min(values))
        return out


def _ratio(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(values.imag) / np.abs(values.real)
    return np.where(values.imag == 0, 0.0, ratio)  # 0/0 (a zero eigenvalue) counts as no rotation


def _by_modulus(values: np.ndarray, k: int) -> np.ndarray:
    order = np.lexsort((-values.imag, -np.abs(values)))  # modulus descending, then +Im before -Im
    return values[order][:k]


def _by_ratio(values: np.ndarray, k: int) -> np.ndarray:
    values = _unique(values)
    values = values[values.imag != 0]  # a real eigenvalue is no rotation
    order = np.lexsort((-values.imag, -np.abs(values), -_ratio(values)))
    return values[order][:k]


def _unique(values: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Drop eigenvalues that two ARPACK runs both found (equal to ``rtol`` of the largest modulus)."""
    kept: list[complex] = []
    scale = max(float(np.max(np.abs(values))) if values.size else 0.0, 1e-300)
    for v in values:
        if all(abs(v - w) > rtol * scale for w in kept):
            kept.append(complex(v))
    return np.asarray(kept, dtype=np.complex128)


def _arpack(op: Any, k: int, which: str, tol: float, maxiter: int | None, v0: np.ndarray,
            symmetric: bool = False) -> tuple[np.ndarray, bool]:
    from scipy.sparse.linalg import ArpackNoConvergence, eigs, eigsh

    try:
        if symmetric:
            return eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False), True
        return eigs(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False), True
    except ArpackNoConvergence as error:
        warnings.warn(f"ARPACK ({which}) did not converge in maxiter={maxiter} restarts: returning the "
                      f"{len(error.eigenvalues)} eigenvalues that had", RuntimeWarning, stacklevel=3)
        return np.asarray(error.eigenvalues), False


def default_tol(dtype: torch.dtype) -> float:
    """ARPACK's relative tolerance: 0 (machine precision) for float64 players, 1e-4 for float32 (the matvec's own
    rounding, ~1e-7 ||J||, would keep a tighter tolerance from ever being met)."""
    return 0.0 if dtype == torch.float64 else 1e-4


def game_jacobian_eigenvalues(game: Any, sample: Any = None, k: int = 6, *, rotation: bool = True,
                              hessians: bool = False, tol: float | None = None, maxiter: int | None = None,
                              seed: int = 0) -> Spectrum:
    """The top-k eigenvalues of the game Jacobian at the current point (and optionally of each player's Hessian).

    Nothing is written: parameters, ``.grad`` and optimizer state are untouched. Buffers (BatchNorm running
    statistics) move as in any train-mode forward: callers that care save and restore them (the callback does).

    Args:
        game: an object with ``players`` and ``graph_field(sample)`` (a toy or a :class:`GANGame`).
        sample: the sample ``graph_field`` takes.
        k: eigenvalues per set, 1 <= k <= n (the number of parameters).
        rotation: also ask ARPACK for the k eigenvalues of largest imaginary part (``which='LI'``, a second run on
            the same graph) and pick the k with the largest |Im|/|Re| among all found; off, they are picked among
            the top-k by modulus only.
        hessians: also the k eigenvalues of largest magnitude of each player's own Hessian (Lanczos, ``eigsh``
            on the diagonal blocks of J: the same graph, no new forward); dense when the player has <= k + 1
            parameters.
        tol: ARPACK's relative tolerance; None: :func:`default_tol` of the players' dtype.
        maxiter: ARPACK's maximum number of restarts (None: scipy's default, 10 n).
        seed: seed of ARPACK's fixed start vector (so that estimates are reproducible).

    Returns:
        A :class:`Spectrum`. For n <= k + 1 (ARPACK's eigs needs k < n - 1) J is built densely (n matvecs) and its
        eigenvalues come from ``numpy.linalg.eigvals``: all of them are then exact to rounding.
    """
    n = parameter_count(game)
    check_spectrum_request(k, n, "k")
    jac = GameJacobian(game, sample)
    tol = default_tol(jac.dtype) if tol is None else tol
    rng = np.random.default_rng(seed)
    converged = True
    counts: dict[str, int] = {}
    if n <= k + 1:
        values = np.linalg.eigvals(jac.dense()).astype(np.complex128)
        top, rotational, method = _by_modulus(values, k), _by_ratio(values, k), "dense"
    else:
        v0 = rng.standard_normal(n)
        lm, ok = _arpack(jac.operator(), k, "LM", tol, maxiter, v0)
        converged &= ok
        counts["LM"] = jac.matvecs
        top = _by_modulus(np.asarray(lm, dtype=np.complex128), k)
        candidates = top
        if rotation:
            li, ok = _arpack(jac.operator(), k, "LI", tol, maxiter, v0)
            converged &= ok
            counts["LI"] = jac.matvecs - sum(counts.values())
            candidates = np.concatenate([top, np.asarray(li, dtype=np.complex128)])
        rotational, method = _by_ratio(candidates, k), "arpack"
    if method == "dense":
        counts["dense"] = jac.matvecs
    player_hessians = None
    if hessians:
        player_hessians = []
        for player, size in enumerate(jac.sizes):
            kk = min(k, size)
            if size == 0:
                player_hessians.append(np.zeros(0))
            elif size <= kk + 1:
                block = np.stack([jac.block_matvec(player, e) for e in np.eye(size)], axis=1)
                values = np.linalg.eigvalsh((block + block.T) / 2)
                player_hessians.append(values[np.argsort(-np.abs(values))][:kk])
            else:
                values, ok = _arpack(jac.block_operator(player), kk, "LM", tol, maxiter,
                                     rng.standard_normal(size), symmetric=True)
                converged &= ok
                values = np.asarray(values, dtype=np.float64)
                player_hessians.append(values[np.argsort(-np.abs(values))])
        counts["hessians"] = jac.matvecs - sum(counts.values())
    return Spectrum(top=top, rotational=rotational, hessians=player_hessians, method=method, n=n,
                    matvecs=jac.matvecs, converged=converged, field_norm=float(np.linalg.norm(
                        jac.field.double().cpu().numpy())), extra={"matvecs": counts})


def eigenvalues_as_lists(values: Sequence[complex]) -> list[list[float]]:
    """[[re, im], ...]: JSON-friendly."""
    return [[float(np.real(v)), float(np.imag(v))] for v in values]
