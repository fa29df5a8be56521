"""The GRAPE ceiling of a charging task: the open-loop optimum (multi-start L-BFGS-B, exact
gradients), verified on the exact driver, as the JSON document ``qhil grape`` writes and the
reports read (``grape_<env>.json``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def grape_ceiling(battery: Any, label: str, *, tau: float = 5.6, n_steps: int = 28, starts: int = 8,
                  maxiter: int = 500, seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """GRAPE on ``battery`` (a Dicke battery) at charging time τ (1/ω_0) in K = ``n_steps``
    steps; the result document (ergotropy in ω_0, protocol, starts, cut-off check)."""
    from qhil.agents.grape import grape_dicke_battery
    from qhil.drivers import ValidationError
    from qhil.envs import check_cutoff
    if battery.kind != "dicke":
        raise ValidationError("model", f"GRAPE here optimises the Dicke battery's charging, not {battery.kind!r}",
                              "a dicke model")
    res = grape_dicke_battery(battery, n_steps=n_steps, dt=tau / n_steps, n_starts=starts, seed=seed, maxiter=maxiter,
                verbose=verbose)
    cutoff = check_cutoff(battery, res.protocol.reshape(-1, 1), tau / n_steps)
    return {"env": label, "model": battery.to_dict(), "omegas": list(battery.omegas), "n_max": battery.n_max,
            "tau": tau, "n_steps": n_steps, "ergotropy": res.ergotropy, "verified_statevector": res.verified,
            "protocol": res.protocol.tolist(), "starts": res.starts, "evaluations": res.evaluations,
            "wall_s": res.wall_s, "cutoff_check": cutoff}


def write_grape(doc: dict[str, Any], path: Path) -> None:
    """The document as ``qhil grape --out`` writes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def summary_line(doc: dict[str, Any]) -> str:
    return (f"{doc['env']}: GRAPE ergotropy {doc['ergotropy']:.6f} (exact driver: {doc['verified_statevector']:.6f}), "
            f"best of {len(doc['starts'])} starts {sorted(round(s, 4) for s in doc['starts'])}, "
            f"{doc['wall_s']:.0f} s; doubling the photon cutoff moves it by "
            f"{doc['cutoff_check']['ergotropy_change']:.1e}")


def ensure_grape(env: str, grape_dir: Path, starts: int = 10, **options: Any) -> None:
    """Compute the GRAPE ceiling of preset ``env`` into ``grape_dir/grape_<env>.json`` if missing
    (a failure is reported, not raised: the table then shows no ceiling for that env); ``options``
    go to :func:`grape_ceiling`."""
    from qhil.envs import ENVIRONMENTS, DickeBattery
    path = Path(grape_dir) / f"grape_{env}.json"
    if path.exists():
        return
    try:
        doc = grape_ceiling(DickeBattery(omegas=ENVIRONMENTS[env]), env, starts=starts, **options)
        print(summary_line(doc))
        write_grape(doc, path)
    except Exception as exc:                      # noqa: BLE001 — reported; the table goes on without it
        print(f"qhil: warning: GRAPE ceiling of {env} failed ({type(exc).__name__}: {exc}); "
              "the table has no ceiling for it", file=sys.stderr)
