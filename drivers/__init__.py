"""The experiment contract (models, controls, measurement schedules, results) and the drivers
that run it. Import nothing from the layers above (envs, agents, experiments, lab).

Layout: ``model``, ``schedule``, ``experiment`` (the contract); ``backend`` (the interface and
``create_backend``); ``statevector`` and ``aer`` (the simulator drivers), ``propagate`` (exact
propagation), ``channels`` (noise channels) and ``density`` (the exact density-matrix engine
for them); ``pauli`` (Pauli labels, grouping into settings, tomography settings, estimation),
``measure``, ``tomography`` (state estimation); ``bridge`` (the lab's ZeroMQ wire protocol and
its client driver, ``zmq://``); ``checks`` (input checks every layer uses); ``errors``.
"""
from .backend import Backend, Capabilities, create_backend, register_driver
from .channels import Channel, bit_flip, depolarizing, kraus_channel, phase_flip
from .errors import QhilError, UnsupportedError, ValidationError
from .experiment import Experiment, Result
from .model import ControlChannel, Model, model_from_dict, model_kinds, register_model
from .propagate import invariant_sector
from .schedule import REGIMES, MeasurementCost, MeasurementSchedule, regime_observables
from .threads import apply_defaults as _apply_thread_defaults
from .threads import default_threads, set_threads

_apply_thread_defaults()

__all__ = ["Backend", "Capabilities", "Channel", "ControlChannel", "Experiment", "MeasurementCost",
           "MeasurementSchedule", "Model", "QhilError", "REGIMES", "Result", "UnsupportedError",
           "ValidationError", "create_backend", "model_from_dict", "model_kinds", "register_driver",
           "register_model", "regime_observables", "set_threads", "default_threads",
           "bit_flip", "depolarizing", "invariant_sector", "kraus_channel", "phase_flip"]
