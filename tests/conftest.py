import numpy as np
import pytest

from qhil.drivers import create_backend
from qhil.envs import DickeBattery, XYChain


@pytest.fixture
def backend():
    return create_backend("statevector", seed=1234)


@pytest.fixture
def small_dicke():
    """N = 3 inhomogeneous battery, small cutoff: cheap for dense cross-checks."""
    return DickeBattery(omegas=(0.9, 1.3, 0.7), n_max=10, coupling_bound=0.5)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def chain():
    return XYChain(n_spins=3)
