"""Physical models (on the :mod:`qhil.drivers` model contract) and figures of merit."""
from .dicke import ENV1, ENV2, ENV3, ENVIRONMENTS, DickeBattery, check_cutoff, default_n_max
from .figures import ergotropy, fidelity, fidelity_density
from .xy_chain import XYChain
from .supply_chain import SecuredGreenSCSEnv, SupplyChainEnv  # seed 004
from .charging import ChargingEnv, ChargingVectorEnv, make_charging_env, RewardWeight, scheduled_weight

__all__ = ["DickeBattery", "XYChain", "ENV1", "ENV2", "ENV3", "ENVIRONMENTS", "check_cutoff",
           "default_n_max", "ergotropy", "fidelity", "fidelity_density",
           "ChargingEnv", "ChargingVectorEnv", "make_charging_env", "RewardWeight", "scheduled_weight",
           "SupplyChainEnv", "SecuredGreenSCSEnv"]
