"""Experiments: what is run (typed, frozen run specs), how (one resumable runner on a local
process pool or a Ray cluster), and what it means (statistics, the paper's tables and figures,
studies and reports).

Layers: ``drivers → envs → agents → experiments → lab``. The command line (``qhil.lab``) only
turns arguments into specs and calls this package.
"""
from .runner import Executor, LocalExecutor, RunOutcome, RunSpec, run_specs

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "RunSpec", "run_specs"]
