"""Exact batched propagation of piecewise-constant dynamics.

exp(−i H(u) dt)|ψ⟩ is evaluated by a Chebyshev expansion (Tal-Ezer & Kosloff) truncated
where the Bessel-coefficient tail is below ``tol`` (default 1e-14): this is exact to
machine precision, not an approximation in dt. Work is restricted to the invariant
subspace reached from the initial state: the connected component of the sparsity graph
of H_0 + Σ|H_k| (for the Dicke battery this is the parity sector, for the XY chain a
fixed-magnetisation sector). When every operator is real, states are kept as real arrays
[Re ψ | Im ψ] so each matrix product is a real one.
"""
from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.special import jv

from ._kernels import propagate_real, split_operators
from .model import Model

_MAX_ARG = 20.0        # a·dt per Chebyshev sub-step; larger steps are split
_DENSE_BOUNDS_DIM = 3000
_BLOCK = 32           # experiments (64 real columns) per cache block in the compiled kernel


def invariant_blocks(model: Model) -> list[np.ndarray]:
    """All H-invariant blocks: connected components of the sparsity graph of
    |H_0| + Σ_k |H_k|, each as sorted basis indices (for any control values)."""
    pattern = abs(model.drift())
    for h in model.control_operators():
        pattern = pattern + abs(h)
    n, labels = connected_components(sp.csr_matrix(pattern), directed=False)
    return [np.nonzero(labels == c)[0] for c in range(n)]


def invariant_sector(model: Model) -> np.ndarray:
    """Sorted basis indices of the smallest union of H-invariant blocks holding ψ(0)."""
    support = np.nonzero(np.abs(model.initial_state()) > 0)[0]
    blocks = [b for b in invariant_blocks(model) if np.isin(b, support).any()]
    return np.sort(np.concatenate(blocks))


def aux_pairs(sector: np.ndarray, aux_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (a, b) of positions in ``sector`` whose basis states share an aux
    index: the terms of Tr_aux |ψ⟩⟨ψ| (or of the qubits' reduced state of a sector block)."""
    level = np.asarray(sector) % aux_dim
    pa, pb = [], []
    for m in np.unique(level):
        pos = np.nonzero(level == m)[0]
        pa.append(np.repeat(pos, len(pos)))
        pb.append(np.tile(pos, len(pos)))
    return np.concatenate(pa), np.concatenate(pb)


def _spectral_bounds(ops: list[sp.csr_matrix], boxes: list[tuple[float, float]]) -> tuple[float, float]:
    """Interval holding the spectrum of H_0 + Σ u_k H_k for every u in the box.

    λ_max(H(u)) is convex and λ_min concave in u, so their extremes sit at the box's
    vertices; dense eigvalsh there is exact. Large problems fall back to Gershgorin discs.
    """
    dim = ops[0].shape[0]
    vertices = list(itertools.product(*boxes))
    if dim <= _DENSE_BOUNDS_DIM and len(vertices) * dim ** 3 <= 2e10:
        lo, hi = np.inf, -np.inf
        for v in vertices:
            h = ops[0].toarray().astype(complex)
            for uk, hk in zip(v, ops[1:]):
                h += uk * hk.toarray()
            w = np.linalg.eigvalsh(h)
            lo, hi = min(lo, w[0]), max(hi, w[-1])
        pad = 1e-8 * max(1.0, hi - lo)
        return lo - pad, hi + pad
    umax = [max(abs(a), abs(b)) for a, b in boxes]
    diag = ops[0].diagonal().real
    radius = np.asarray(abs(ops[0]).sum(axis=1)).ravel() - np.abs(diag)
    lo_d, hi_d = diag.copy(), diag.copy()
    for um, hk in zip(umax, ops[1:]):
        radius += um * np.asarray(abs(hk).sum(axis=1)).ravel()
    return float((lo_d - radius).min()), float((hi_d + radius).max())


class _Operator:
    """A sector-restricted operator: a diagonal vector when diagonal, else sparse CSR."""

    def __init__(self, h: sp.csr_matrix, real: bool) -> None:
        h = sp.csr_matrix(h)
        off = h - sp.diags(h.diagonal())
        off.eliminate_zeros()
        dtype = float if real else complex
        self.diag = h.diagonal().astype(dtype) if off.nnz == 0 else None
        self.mat = None if self.diag is not None else h.astype(dtype).tocsr()

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.diag[:, None] * x if self.diag is not None else self.mat @ x


class ChebyshevPropagator:
    """Batched exp(−i H(u) dt) on a model's invariant sector.

    States are (d, B) arrays over the sector basis (complex), one column per experiment,
    and ``u`` is (B, n_controls): each column can have its own control values.
    ``sector``: basis indices of an invariant subspace (default: the one holding ψ(0));
    pass ``np.arange(model.dim)`` for the full space.
    """

    def __init__(self, model: Model, tol: float = 1e-14, sector: np.ndarray | None = None) -> None:
        self.model = model
        self.tol = tol
        self.sector = invariant_sector(model) if sector is None else np.asarray(sector, dtype=int)
        idx = self.sector
        ops = [model.drift()] + list(model.control_operators())
        ops = [sp.csr_matrix(h)[idx][:, idx] for h in ops]
        self.real = all(not np.iscomplexobj(h.data) or not np.any(h.data.imag) for h in ops)
        boxes = [(c.lower, c.upper) for c in model.controls]
        lo, hi = _spectral_bounds(ops, boxes)
        self.center = 0.5 * (hi + lo)
        self.half_width = max(0.5 * (hi - lo), 1e-12)
        shifted = [ops[0] - self.center * sp.identity(len(idx), format="csr")] + ops[1:]
        self._ops = [_Operator(h / self.half_width, self.real) for h in shifted]
        if self.real:
            self._split = split_operators([sp.csr_matrix(h / self.half_width) for h in shifted])
        self._coeffs: dict[float, tuple[int, np.ndarray, complex]] = {}

    @property
    def dim(self) -> int:
        return len(self.sector)

    @cached_property
    def _level_groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sector positions grouped for the partial trace: aux levels whose sector states
        carry the same qubit configurations q form one group, as (q (m,), positions (L, m))."""
        level, q = self.sector % self.model.aux_dim, self.sector // self.model.aux_dim
        groups: dict[tuple[int, ...], list[np.ndarray]] = {}
        for n in np.unique(level):
            pos = np.flatnonzero(level == n)
            groups.setdefault(tuple(q[pos]), []).append(pos)
        return [(np.array(k), np.stack(v)) for k, v in groups.items()]

    def qubit_density(self, psi: np.ndarray) -> np.ndarray:
        """Reduced states of the qubits, (B, 2^n, 2^n), from sector states psi (d, B):
        ρ = Tr_aux |ψ⟩⟨ψ| = Σ_n A_n A_n†, A_n[q] = ψ(q, n), one batched product per group."""
        nq = 2 ** self.model.n_qubits
        rows = psi.T                                                     # (B, d)
        rho = np.zeros((rows.shape[0], nq, nq), dtype=complex)
        for q, pos in self._level_groups:
            a = rows[:, pos.T]                                           # (B, m, L)
            rho[:, q[:, None], q[None, :]] += a @ a.conj().transpose(0, 2, 1)   # groups may share q
        return rho

    def aux_top_population(self, psi: np.ndarray) -> np.ndarray:
        """(B,) population of the aux subsystem's top level, from sector states psi (d, B)."""
        top = np.abs(psi.T[:, self._top_positions])
        return np.einsum("bt,bt->b", top, top)

    @cached_property
    def _top_positions(self) -> np.ndarray:
        return np.flatnonzero(self.sector % self.model.aux_dim == self.model.aux_dim - 1)

    def restrict(self, psi_full: np.ndarray) -> np.ndarray:
        return psi_full[self.sector]

    def embed(self, psi: np.ndarray) -> np.ndarray:
        """Sector states (d, B) → full-space states (B, dim)."""
        out = np.zeros((psi.shape[1], self.model.dim), dtype=complex)
        out[:, self.sector] = psi.T
        return out

    def _coefficients(self, dt: float) -> tuple[int, np.ndarray, complex]:
        if dt not in self._coeffs:
            n_sub = max(1, int(np.ceil(self.half_width * dt / _MAX_ARG)))
            x = self.half_width * dt / n_sub
            ks = np.arange(int(x) + 60)
            j = jv(ks, x)
            tail = np.cumsum(np.abs(j[::-1]))[::-1]           # Σ_{m≥k} |J_m|
            order = int(np.nonzero(2 * tail > self.tol)[0][-1]) + 1
            b = 2.0 * j[:order + 1] * (-1j) ** ks[:order + 1]
            b[0] /= 2.0
            self._coeffs[dt] = (n_sub, b, np.exp(-1j * self.center * dt / n_sub))
        return self._coeffs[dt]

    def order(self, dt: float) -> int:
        """Number of H-products per step of length dt."""
        n_sub, b, _ = self._coefficients(dt)
        return n_sub * (len(b) - 1)

    def _apply_h(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = self._ops[0].apply(x)
        for k, op in enumerate(self._ops[1:]):
            out += op.apply(x) * u[:, k][None, :]
        return out

    def step(self, psi: np.ndarray, u: np.ndarray, dt: float) -> np.ndarray:
        """One step: psi (d, B) complex, u (B, n_controls) → exp(−i H(u) dt) psi."""
        n_sub, b, phase = self._coefficients(dt)
        u = np.asarray(u, dtype=float)
        if self.real:
            coef = np.where(np.arange(len(b)) % 2 == 0, b.real, b.imag)
            out = np.array(psi, dtype=complex, order="C")
            return propagate_real(*self._split, np.ascontiguousarray(u), out, coef, phase, n_sub, _BLOCK)
        x = psi.astype(complex)
        for _ in range(n_sub):
            x = phase * self._series_complex(x, u, b)
        return x

    def _series_complex(self, x: np.ndarray, u: np.ndarray, b: np.ndarray) -> np.ndarray:
        acc = b[0] * x
        prev, cur = x, self._apply_h(x, u)
        acc += b[1] * cur
        for k in range(2, len(b)):
            nxt = 2.0 * self._apply_h(cur, u) - prev
            prev, cur = cur, nxt
            acc += b[k] * cur
        return acc

