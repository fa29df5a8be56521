"""One module per ``qhil`` subcommand (see :mod:`qhil.lab.cli`): argument parsing only; the
work is in :mod:`qhil.experiments`."""
