"""Compiled inner loop of the Chebyshev propagator (numba).

For a block of columns it evaluates exp(−i H(u) dt) ψ = phase · Σ_k b_k T_k(H̃) ψ in one
pass per Chebyshev term, fusing the sparse product, the three-term recurrence and the
accumulation that numpy would do in ~9 passes over memory. The operators are real, so
each complex column is carried as two real ones. Column blocks are independent and are
spread over numba's threads (``prange``) when there are several; qhil sets the thread
count deliberately (see :mod:`qhil.drivers.threads`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


def propagate_real(diag, row_ptr, seg_ptr, seg_op, indices, data, u, psi, coef, phase, n_sub, block):
    """ψ ← (phase · Σ_k coef_k T_k(H̃))^n_sub ψ for every column, in place.

    H̃ = Op_0 + Σ_m u[c, m−1] Op_m on column c, with the real operators given by
    :func:`split_operators`: their diagonals ``diag`` (n_ops, d), and their off-diagonal
    entries as segments (one per row and operator) of a CSR-like list.
    psi: (d, B) complex128; u: (B, n_ops−1); coef: b_k for even k, Im(b_k) for odd k
    (b_k = (2 − δ_k0) (−i)^k J_k); phase: complex e^{−i c dt/n_sub}.
    """
    args = (diag, row_ptr, seg_ptr, seg_op, indices, data, u, psi, coef, phase, n_sub)
    n_env = psi.shape[1]
    if n_env <= block:      # one block: threads cost more than they give
        _propagate_block(*args, 0, n_env)
    else:
        _propagate_parallel(*args, block)
    return psi


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _propagate_parallel(diag, row_ptr, seg_ptr, seg_op, indices, data, u, psi, coef, phase, n_sub, block):
    n_env = psi.shape[1]
    n_blocks = (n_env + block - 1) // block
    for b in prange(n_blocks):
        e0 = b * block
        _propagate_block(diag, row_ptr, seg_ptr, seg_op, indices, data, u, psi, coef, phase, n_sub,
                         e0, min(n_env, e0 + block))


@njit(cache=True, nogil=True, fastmath=True)
def _propagate_block(diag, row_ptr, seg_ptr, seg_op, indices, data, u, psi, coef, phase, n_sub, e0, e1):
    d = psi.shape[0]
    nb = e1 - e0
    nc = 2 * nb                      # columns [0, nb): Re ψ, [nb, 2nb): Im ψ
    n_ops = u.shape[1] + 1
    n_terms = coef.shape[0]
    w = np.empty((n_ops, nc))        # operator weights per column: 1, u_1, u_2, …
    for c in range(nc):
        w[0, c] = 1.0
        for m in range(1, n_ops):
            w[m, c] = u[e0 + c % nb, m - 1]
    wd = np.zeros((d, nc))           # the diagonal of H̃, per row and column
    for i in range(d):
        for m in range(n_ops):
            dm = diag[m, i]
            if dm != 0.0:
                for c in range(nc):
                    wd[i, c] += w[m, c] * dm
    x = np.empty((d, nc))
    for i in range(d):
        for c in range(nb):
            x[i, c] = psi[i, e0 + c].real
            x[i, nb + c] = psi[i, e0 + c].imag
    prev = np.empty((d, nc))
    cur = np.empty((d, nc))
    nxt = np.empty((d, nc))
    even = np.empty((d, nc))
    odd = np.empty((d, nc))
    h = np.empty(nc)                 # row i of H̃ · src
    t = np.empty(nc)                 # one operator's off-diagonal part of that row
    pr, pi = phase.real, phase.imag
    for _ in range(n_sub):
        for i in range(d):
            for c in range(nc):
                prev[i, c] = x[i, c]
                even[i, c] = coef[0] * x[i, c]
                odd[i, c] = 0.0
        for k in range(1, n_terms):
            src = prev if k == 1 else cur
            ck = coef[k]
            for i in range(d):
                for c in range(nc):
                    h[c] = wd[i, c] * src[i, c]
                for s in range(row_ptr[i], row_ptr[i + 1]):
                    for c in range(nc):
                        t[c] = 0.0
                    for p in range(seg_ptr[s], seg_ptr[s + 1]):
                        j = indices[p]
                        v = data[p]
                        for c in range(nc):
                            t[c] += v * src[j, c]
                    m = seg_op[s]
                    for c in range(nc):
                        h[c] += w[m, c] * t[c]
                if k == 1:                                   # T_1 = H̃ ψ
                    for c in range(nc):
                        nxt[i, c] = h[c]
                else:                                        # T_k = 2 H̃ T_{k−1} − T_{k−2}
                    for c in range(nc):
                        nxt[i, c] = 2.0 * h[c] - prev[i, c]
                if k % 2 == 0:
                    for c in range(nc):
                        even[i, c] += ck * nxt[i, c]
                else:
                    for c in range(nc):
                        odd[i, c] += ck * nxt[i, c]
            if k == 1:
                cur, nxt = nxt, cur
            else:
                prev, cur, nxt = cur, nxt, prev
        # Σ b_k T_k ψ = even + i·odd, then the phase: split Re = even_R − odd_I, Im = even_I + odd_R
        for i in range(d):
            for c in range(nb):
                re = even[i, c] - odd[i, nb + c]
                im = even[i, nb + c] + odd[i, c]
                x[i, c] = pr * re - pi * im
                x[i, nb + c] = pi * re + pr * im
    for i in range(d):
        for c in range(nb):
            psi[i, e0 + c] = complex(x[i, c], x[i, nb + c])


def split_operators(ops: list) -> tuple[np.ndarray, ...]:
    """Real sparse operators → (diag (n_ops, d), row_ptr, seg_ptr, seg_op, indices, data).

    The off-diagonal nonzeros are sorted by (row, operator, column) and cut into segments
    of equal (row, operator): row i owns segments row_ptr[i]..row_ptr[i+1], segment s holds
    nonzeros seg_ptr[s]..seg_ptr[s+1] of operator seg_op[s].
    """
    d = ops[0].shape[0]
    diag = np.zeros((len(ops), d))
    rows, cols, vals, which = [], [], [], []
    for m, op in enumerate(ops):
        coo = op.tocoo()
        on = coo.row == coo.col
        np.add.at(diag[m], coo.row[on], coo.data[on].real)
        keep = ~on & (coo.data != 0)
        rows.append(coo.row[keep])
        cols.append(coo.col[keep])
        vals.append(coo.data[keep].real.astype(np.float64))
        which.append(np.full(keep.sum(), m, dtype=np.int64))
    r, c, v, w = (np.concatenate(a) for a in (rows, cols, vals, which))
    order = np.lexsort((c, w, r))
    r, c, v, w = r[order], c[order], v[order], w[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(r) != 0) | (np.diff(w) != 0)]) if r.size else np.zeros(0, int)
    seg_ptr = np.append(starts, r.size).astype(np.int64)
    row_ptr = np.zeros(d + 1, dtype=np.int64)
    np.add.at(row_ptr, r[starts] + 1, 1)
    return (diag, np.cumsum(row_ptr), seg_ptr, w[starts].astype(np.int64), c.astype(np.int64), v)
