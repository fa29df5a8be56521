#!/usr/bin/env python3
"""A stand-in instrument for the exec device (qhil-exec/1), written WITHOUT qhil.

It reads one JSON request on stdin and writes one JSON reply on stdout, as a LabVIEW,
MATLAB or vendor program would (docs/devices.md). The physics is the inhomogeneous Dicke
battery, built here from the request's ``model`` with numpy alone:

    H(t) = Σ_j ω_j |e⟩⟨e|_j + ω_c a†a + u(t) Σ_j σx_j (a + a†),

qubits (qubit 0 first) ⊗ cavity, initial state |g…g⟩ ⊗ |n0⟩, u piecewise constant over
steps of length dt (each step exactly exp(−i H dt), from the eigendecomposition of the
Hermitian H). Outcome index b: qubit 0 is the most
significant bit, bit 0 = |g⟩. Counts are multinomial with numpy's default_rng(seed).

Commands: "run" (the experiment), "safe" (reply {}), "calibration" (reply
{"calibration": {...}}). ``--state FILE`` appends one JSON line per command received
(the tests read it to see what the server asked for).
"""
from __future__ import annotations

import json
import sys
from functools import reduce

import numpy as np

PROTOCOL = "qhil-exec/1"
SQRT_HALF = 1.0 / np.sqrt(2.0)
# rotations taking each basis's +1 eigenvector to |0⟩: Z → 1, X → Hadamard, Y → Hadamard·S†
TO_Z = {"Z": np.eye(2, dtype=complex),
        "X": SQRT_HALF * np.array([[1, 1], [1, -1]], dtype=complex),
        "Y": SQRT_HALF * np.array([[1, -1j], [1, 1j]], dtype=complex)}


def kron_all(mats):
    return reduce(np.kron, mats)


def dicke(params):
    omegas = [float(w) for w in params["omegas"]]
    n, nf = len(omegas), int(params["n_max"]) + 1
    a = np.diag(np.sqrt(np.arange(1, nf)), 1)
    excited, sx, i2 = np.diag([0.0, 1.0]), np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2)

    def on(op, j):
        return kron_all([op if k == j else i2 for k in range(n)])

    h0 = np.kron(sum(w * on(excited, j) for j, w in enumerate(omegas)), np.eye(nf))
    h0 = h0 + float(params["omega_c"]) * np.kron(np.eye(2 ** n), a.T @ a)
    hc = np.kron(sum(on(sx, j) for j in range(n)), a + a.T)
    psi0 = np.zeros(2 ** n * nf, dtype=complex)
    psi0[int(params["initial_photons"])] = 1.0
    return n, nf, h0, hc, psi0


def probabilities(request):
    model = request.get("model") or {}
    if model.get("kind") != "dicke":
        raise ValueError(f"this emulator runs the Dicke battery only, not {model.get('kind')!r}")
    n, nf, h0, hc, psi0 = dicke(model["params"])
    if n != request["n_qubits"]:
        raise ValueError("n_qubits does not match the model")
    controls = np.asarray(request["controls"], dtype=float).reshape(-1, 1)
    dt, steps, settings = float(request["dt"]), request["steps"], request["settings"]
    rotations = [kron_all([TO_Z[c] for c in s]) for s in settings]
    out = np.empty((len(steps), len(settings), 2 ** n))
    propagators = {}

    def step(u):                            # exp(−i dt H(u)), H Hermitian: V e^{−iλdt} V†
        if u not in propagators:
            lam, v = np.linalg.eigh(h0 + u * hc)
            propagators[u] = (v * np.exp(-1j * dt * lam)) @ v.conj().T
        return propagators[u]

    psi, done = psi0.copy(), 0
    for i, k in enumerate(steps):
        while done < k:                     # prefix replay: the state after k steps
            psi = step(float(controls[done, 0])) @ psi
            done += 1
        m = psi.reshape(2 ** n, nf)
        rho = m @ m.conj().T                # qubits' reduced density matrix
        for s, u in enumerate(rotations):
            p = np.clip(np.real(np.diag(u @ rho @ u.conj().T)), 0.0, None)
            out[i, s] = p / p.sum()
    return out


def main(argv):
    request = json.load(sys.stdin)
    state = argv[argv.index("--state") + 1] if "--state" in argv else None
    command = request.get("command")
    if state:
        with open(state, "a") as f:
            f.write(json.dumps({"command": command, "steps": request.get("steps"),
                                "seed": request.get("seed"), "shots": request.get("shots")}) + "\n")
    if request.get("protocol") != PROTOCOL:
        print(json.dumps({"error": f"unknown protocol {request.get('protocol')!r}"}))
        return 0
    if command == "safe":
        print("{}")
        return 0
    if command == "calibration":
        print(json.dumps({"calibration": {"instrument": "exec_emulator", "readout_fidelity": 1.0}}))
        return 0
    if command != "run":
        print(json.dumps({"error": f"unknown command {command!r}"}))
        return 0
    probs = probabilities(request)
    shots = request["shots"]
    calibration = {"instrument": "exec_emulator", "last_seed": request["seed"]}
    if shots is None:
        print(json.dumps({"probabilities": probs.tolist(), "calibration": calibration}))
        return 0
    rng = np.random.default_rng(request["seed"])
    counts = [[rng.multinomial(shots, p).tolist() for p in ps] for ps in probs]
    print(json.dumps({"counts": counts, "calibration": calibration}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
