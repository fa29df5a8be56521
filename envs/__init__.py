"""Physical models (on the :mod:`qhil.drivers` model contract) and figures of merit."""
from .dicke import ENV1, ENV2, ENV3, ENVIRONMENTS, DickeBattery, check_cutoff, default_n_max
from .figures import ergotropy, fidelity, fidelity_density
from .xy_chain import XYChain

__all__ = ["DickeBattery", "XYChain", "ENV1", "ENV2", "ENV3", "ENVIRONMENTS", "check_cutoff",
           "default_n_max", "ergotropy", "fidelity", "fidelity_density"]
