"""Compiled inner loop of the Chebyshev propagator (numba).

One pass per Chebyshev term over a cache-sized block of columns, fusing the sparse
product, the three-term recurrence and the accumulation that numpy would do in ~9 passes.
Column blocks are independent, so they are spread over numba's threads (``prange``);
qhil sets that thread count deliberately (see :func:`qhil.drivers.set_threads`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


def chebyshev_series(indptr, indices, data, opidx, weights, x, coef, even, odd, block):
    """even = Σ_{k even} coef[k] T_k(H̃) x,  odd = Σ_{k odd} coef[k] T_k(H̃) x.

    H̃ = Σ_m weights[m, c] · Op_m acts on column c; the operators are merged into one CSR
    matrix (indptr, indices, data) whose nonzero p belongs to operator opidx[p].
    x, even, odd: (d, C) float64; weights: (n_ops, C); coef: (n_terms,).
    One block runs serially (threads cost more than they give there); more go to prange.
    """
    d, ncol = x.shape
    if ncol <= block:
        _series_block(indptr, indices, data, opidx, weights, x, coef, even, odd, d, ncol, weights.shape[0])
        return even, odd
    return _series_parallel(indptr, indices, data, opidx, weights, x, coef, even, odd, block)


@njit(cache=True, nogil=True, parallel=True)
def _series_parallel(indptr, indices, data, opidx, weights, x, coef, even, odd, block):
    d, ncol = x.shape
    n_ops = weights.shape[0]
    n_blocks = (ncol + block - 1) // block
    for blk in prange(n_blocks):
        c0 = blk * block
        nc = min(ncol, c0 + block) - c0
        _series_block(indptr, indices, data, opidx, weights[:, c0:c0 + nc], x[:, c0:c0 + nc], coef,
                      even[:, c0:c0 + nc], odd[:, c0:c0 + nc], d, nc, n_ops)
    return even, odd


@njit(cache=True, nogil=True)
def _series_block(indptr, indices, data, opidx, w, x, coef, even, odd, d, nc, n_ops):
    n_terms = coef.shape[0]
    prev = np.empty((d, nc))
    cur = np.empty((d, nc))
    nxt = np.empty((d, nc))
    acc = np.empty((n_ops, nc))
    for i in range(d):
        for c in range(nc):
            prev[i, c] = x[i, c]
            even[i, c] = coef[0] * x[i, c]
            odd[i, c] = 0.0
    for k in range(1, n_terms):
        src = prev if k == 1 else cur
        ck = coef[k]
        for i in range(d):
            acc[:, :] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                m = opidx[p]
                v = data[p]
                for c in range(nc):
                    acc[m, c] += v * src[j, c]
            for c in range(nc):
                h = 0.0
                for m in range(n_ops):
                    h += w[m, c] * acc[m, c]
                nxt[i, c] = h if k == 1 else 2.0 * h - prev[i, c]
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


def merge_operators(ops: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge real CSR operators into one CSR with an operator index per nonzero."""
    rows, cols, vals, which = [], [], [], []
    for m, op in enumerate(ops):
        coo = op.tocoo()
        keep = coo.data != 0
        rows.append(coo.row[keep])
        cols.append(coo.col[keep])
        vals.append(coo.data[keep].real.astype(np.float64))
        which.append(np.full(keep.sum(), m, dtype=np.int64))
    r, c, v, w = (np.concatenate(a) for a in (rows, cols, vals, which))
    order = np.lexsort((c, r))
    r, c, v, w = r[order], c[order], v[order], w[order]
    d = ops[0].shape[0]
    indptr = np.zeros(d + 1, dtype=np.int64)
    np.add.at(indptr, r + 1, 1)
    return np.cumsum(indptr), c.astype(np.int64), v, w
