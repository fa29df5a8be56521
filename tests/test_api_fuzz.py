"""Property tests of the public constructors (issue 16): every malformed argument raises a
ValidationError whose ``parameter`` names that argument, before any work.

Each row of :data:`CASES` is (constructor, valid keyword arguments, argument, strategy of bad
values); hypothesis draws bad values (NaN, ±inf, out of range on either side, wrong types,
negative seeds, …) and the test checks the error and its ``parameter``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qhil.drivers import ValidationError, create_backend
from qhil.drivers.backend import SEED_MAX

NAN, INF = float("nan"), float("inf")
WRONG_TYPE = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just(object()))


def bad_float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> st.SearchStrategy:
    """Numbers a check of a finite float in [lo, hi] (open ends as given) must refuse."""
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=True)
    above = st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False, allow_infinity=True)
    return st.one_of(st.just(NAN), st.just(INF), st.just(-INF), below, above, st.text(max_size=4),
                     st.booleans())


def bad_int(lo: int, hi: int) -> st.SearchStrategy:
    """Values a check of an integer in [lo, hi] must refuse."""
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                     st.floats(allow_nan=True).filter(lambda x: not (math.isfinite(x) and x.is_integer())),
                     st.text(max_size=4), st.none(), st.booleans())


BAD_SEED = st.one_of(st.integers(max_value=-1), st.integers(min_value=SEED_MAX + 1), st.floats(), st.text(max_size=3),
                     st.booleans())
NON_FINITE = st.sampled_from([NAN, INF, -INF, "1", None])


def _charging(**kw: Any) -> Any:
    from qhil.envs import ChargingVectorEnv
    return ChargingVectorEnv(**({"regime": "energies"} | kw))


def _gym_charging(**kw: Any) -> Any:
    from qhil.envs.charging import ChargingEnv
    return ChargingEnv(**({"regime": "energies"} | kw))


def _dicke(**kw: Any) -> Any:
    from qhil.envs import DickeBattery
    return DickeBattery(**kw)


def _randomised(**kw: Any) -> Any:
    from qhil.envs.robust import RandomisedChargingEnv
    return RandomisedChargingEnv(**({"regime": "energies", "omega_range": (0.5, 1.5)} | kw))


def _history(**kw: Any) -> Any:
    from qhil.envs.history import HistoryVectorEnv
    return HistoryVectorEnv(_CHARGING_ENV, **({"window": 2} | kw))


def _supply(**kw: Any) -> Any:
    from qhil.envs import SupplyChainEnv
    return SupplyChainEnv(**kw)


def _xy(**kw: Any) -> Any:
    from qhil.envs import XYChain
    return XYChain(**kw)


def _sac(**kw: Any) -> Any:
    from qhil.agents.sac_config import SACConfig
    return SACConfig(**kw)


def _sac_table(**kw: Any) -> Any:
    from qhil.agents.sac_config import SACConfig
    return SACConfig.from_dict(kw)


def _reward_weight(**kw: Any) -> Any:
    from qhil.envs.charging import RewardWeight
    return RewardWeight.from_options(**kw)


def _ppo(**kw: Any) -> Any:
    from qhil.agents.ppo import PPOConfig
    return PPOConfig(**kw)


def _dqn(**kw: Any) -> Any:
    from qhil.agents.dqn import DQNConfig
    return DQNConfig(**kw)


def _bdqn(**kw: Any) -> Any:
    from qhil.agents.bdqn import BootstrappedDQNConfig
    return BootstrappedDQNConfig(**kw)


def _ddpg(**kw: Any) -> Any:
    from qhil.agents.ddpg import DDPGConfig
    return DDPGConfig(**kw)


def _ensemble(**kw: Any) -> Any:
    from qhil.agents.ensemble import EnsembleConfig
    return EnsembleConfig(**kw)


def _study(**kw: Any) -> Any:
    from qhil.experiments.battery.measurement import StudyConfig
    return StudyConfig(**kw)


def _runspec(**kw: Any) -> Any:
    from qhil.experiments.supply_chain.specs import SweepRun
    return SweepRun(**({"sweep": "lr", "agent": "dqn", "seed": 0, "episodes": 1} | kw))


def _grape(**kw: Any) -> Any:
    from qhil.agents.chain_control import grape_xy_chain
    from qhil.envs import XYChain
    return grape_xy_chain(**({"model": XYChain(n_spins=2), "n_steps": 2, "dt": 0.3, "maxiter": 2} | kw))


def _mpc(**kw: Any) -> Any:
    from qhil.agents.chain_control import MPCPolicy
    from qhil.envs import SupplyChainEnv
    return MPCPolicy(SupplyChainEnv(n_spins=2, max_steps=2), **kw)


def _backend(**kw: Any) -> Any:
    return create_backend("statevector", **kw)


_CHARGING_ENV: Any = None

#: (constructor, argument, bad values); the valid defaults fill the other arguments.
CASES: list[tuple[Callable[..., Any], str, st.SearchStrategy]] = [
    (_backend, "seed", BAD_SEED),
    (_charging, "n_envs", bad_int(1, 100_000)),
    (_charging, "n_steps", bad_int(1, 100_000)),
    (_charging, "tau", bad_float(0.0, 1e6, lo_open=True)),
    (_charging, "action_low", bad_float(-0.3, 0.3)),
    (_charging, "action_high", bad_float(-0.3, 0.3)),
    (_charging, "weight", bad_float(0.0, 1.0).filter(lambda x: x is not None)),
    (_charging, "w_mean", NON_FINITE.filter(lambda x: x is not None)),
    (_charging, "w_width", bad_float(0.0, 1e30, lo_open=True)),
    (_charging, "every", bad_int(1, 1_000_000)),
    (_charging, "regime", st.text(max_size=8).filter(lambda t: t not in ("full_state", "energies", "first_order",
                                                                          "second_order"))),
    (_charging, "backend", st.one_of(st.integers(), st.floats(), st.text(max_size=6).filter(
        lambda t: t not in ("statevector", "aer", "zmq") and "://" not in t))),
    (_gym_charging, "w_width", bad_float(0.0, 1e30, lo_open=True)),
    (_gym_charging, "n_steps", bad_int(1, 100_000)),
    (_dicke, "omegas", st.one_of(st.just(()), st.lists(st.floats(0.01, 100), min_size=11, max_size=12),
                                 st.lists(bad_float(0.0, 100.0, lo_open=True).filter(
                                     lambda x: not isinstance(x, (str, bool))), min_size=1, max_size=3))),
    (_dicke, "omega_c", bad_float(0.0, 100.0, lo_open=True)),
    (_dicke, "coupling_bound", bad_float(0.0, 100.0, lo_open=True)),
    (_dicke, "n_max", bad_int(5, 400).filter(lambda x: x is not None)),
    (_dicke, "initial_photons", bad_int(0, 399).filter(lambda x: x is not None)),
    (_randomised, "omega_range", st.one_of(
        st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)).filter(
            lambda p: not (math.isfinite(p[0]) and math.isfinite(p[1]) and 0 < p[0] < p[1] <= 100)),
        st.just((1.0,)), st.just("ab"), st.integers())),
    (_randomised, "omega_seed", BAD_SEED),
    (_history, "window", bad_int(1, 64)),
    (_history, "of", st.text(max_size=6).filter(lambda t: t not in ("observations", "actions"))),
    (_supply, "n_spins", bad_int(1, 12)),
    (_supply, "noise_level", bad_float(0.0, 10.0)),
    (_supply, "capacity", bad_float(0.0, 1e9, lo_open=True)),
    (_supply, "disruption_prob", bad_float(0.0, 1.0)),
    (_supply, "max_steps", bad_int(1, 100_000)),
    (_supply, "dt", bad_float(0.0, 1000.0, lo_open=True).filter(lambda x: x is not None)),
    (_xy, "n_spins", bad_int(1, 12)),
    (_xy, "coupling", bad_float(-100.0, 100.0)),
    (_xy, "field_bound", bad_float(0.0, 1000.0, lo_open=True)),
    (_sac, "gamma", bad_float(0.0, 1.0)),
    (_sac, "lr", bad_float(0.0, 1.0, lo_open=True)),
    (_sac, "polyak", bad_float(0.0, 1.0)),
    (_sac, "alpha_init", bad_float(0.0, 1e6, lo_open=True)),
    (_sac, "entropy_decay", bad_float(0.0, 1e27, lo_open=True)),
    (_sac_table, "w_mean", NON_FINITE.filter(lambda x: x is not None)),   # an older table: the env's weight
    (_sac_table, "w_width", bad_float(0.0, 1e30, lo_open=True).filter(lambda x: x is not None)),
    (_reward_weight, "weight", bad_float(0.0, 1.0).filter(lambda x: x is not None)),
    (_reward_weight, "w_mean", NON_FINITE.filter(lambda x: x is not None)),
    (_reward_weight, "w_width", bad_float(0.0, 1e30, lo_open=True).filter(lambda x: x is not None)),
    (_sac, "total_steps", bad_int(1, 10**12)),
    (_sac, "reference_steps", bad_int(1, 10**12)),
    (_sac, "batch_size", bad_int(1, 180_000)),
    (_sac, "buffer_size", bad_int(1, 10**9)),
    (_sac, "learning_starts", bad_int(0, 10**9)),
    (_sac, "seed", BAD_SEED),
    (_sac, "precision", st.text(max_size=5).filter(lambda t: t not in ("fp32", "bf16", "auto"))),
    (_ppo, "gamma", bad_float(0.0, 1.0)),
    (_ppo, "lr", bad_float(0.0, 1.0, lo_open=True)),
    (_ppo, "rollout", bad_int(2, 10_000_000)),
    (_ppo, "clip", bad_float(0.0, 1.0, lo_open=True)),
    (_ppo, "vf_coef", bad_float(0.0, 1e6)),
    (_ppo, "ent_coef", bad_float(0.0, 1e6)),
    (_ppo, "grad_clip", bad_float(0.0, 1e6, lo_open=True)),
    (_ppo, "total_steps", bad_int(1, 10**12)),
    (_ppo, "seed", BAD_SEED),
    (_dqn, "gamma", bad_float(0.0, 1.0)),
    (_dqn, "lr", bad_float(0.0, 1.0, lo_open=True)),
    (_dqn, "eps_start", bad_float(0.0, 1.0)),
    (_dqn, "eps_decay", bad_float(0.0, 1.0, lo_open=True)),
    (_dqn, "grad_clip", bad_float(0.0, 1e6, lo_open=True)),
    (_dqn, "batch_size", bad_int(1, 10_000)),
    (_dqn, "total_steps", bad_int(1, 10**12)),
    (_dqn, "seed", BAD_SEED),
    (_bdqn, "heads", bad_int(1, 100)),
    (_bdqn, "mask_prob", bad_float(0.0, 1.0, lo_open=True)),
    (_bdqn, "gamma", bad_float(0.0, 1.0)),
    (_bdqn, "seed", BAD_SEED),
    (_ddpg, "gamma", bad_float(0.0, 1.0)),
    (_ddpg, "tau", bad_float(0.0, 1.0, lo_open=True)),
    (_ddpg, "noise", bad_float(0.0, 10.0)),
    (_ddpg, "total_steps", bad_int(1, 10**12)),
    (_ddpg, "seed", BAD_SEED),
    (_ensemble, "temperature", bad_float(0.0, 1e9, lo_open=True)),
    (_ensemble, "ema", bad_float(0.0, 1.0, lo_open=True)),
    (_ensemble, "omega_min", bad_float(0.0, 0.5)),
    (_ensemble, "episode_steps", bad_int(1, 1_000_000)),
    (_ensemble, "seed", BAD_SEED),
    (_ensemble, "dqn", st.one_of(st.none(), st.integers(), st.text(max_size=3))),
    (_study, "total_steps", bad_int(1, 10_000_000)),
    (_study, "seed", BAD_SEED),
    (_study, "frequency", st.one_of(st.just("0"), st.just("1001"), st.text(max_size=4).filter(
        lambda t: not (t.strip().isascii() and t.strip().isdecimal() and 1 <= int(t.strip()) <= 1000)
        and t.strip().lower() not in ("final", "final_only")))),
    (_grape, "n_steps", bad_int(1, 100_000)),
    (_grape, "dt", bad_float(0.0, 1e6, lo_open=True)),
    (_grape, "seed", BAD_SEED.filter(lambda x: x is not None)),
    (_grape, "restarts", bad_int(1, 10_000)),
    (_grape, "bounds", st.one_of(st.just((1.0, 0.0)), st.just((NAN, 1.0)), st.just("ab"), st.integers())),
    (_grape, "objective", st.text(max_size=5).filter(lambda t: t not in ("final", "mean"))),
    (_mpc, "horizon", bad_int(1, 6)),
    (_runspec, "seed", BAD_SEED),
    (_runspec, "episodes", bad_int(1, 1_000_000)),
    (_runspec, "lr", bad_float(0.0, 1.0, lo_open=True)),
    (_runspec, "n_spins", bad_int(1, 12)),
    (_runspec, "p", bad_float(0.0, 1.0)),
    (_runspec, "agent", st.text(max_size=5).filter(lambda t: t not in ("ensemble", "ppo", "dqn", "ddpg", "bdqn"))),
]


def _id(case: tuple) -> str:
    return f"{case[0].__name__.lstrip('_')}-{case[1]}"


@pytest.fixture(scope="module", autouse=True)
def _one_charging_env() -> None:
    global _CHARGING_ENV
    from qhil.envs import ChargingVectorEnv
    _CHARGING_ENV = ChargingVectorEnv(regime="energies")


def _check_case(make: Callable[..., Any], param: str, bad: st.SearchStrategy, examples: int) -> None:
    make()                                        # the defaults are valid: the error below is the argument's

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(bad)
    def check(value: Any) -> None:
        with pytest.raises(ValidationError) as err:
            make(**{param: value})
        assert err.value.parameter.split("[")[0].split(".")[0] in (param, "action bounds"), \
            (param, value, str(err.value))
        assert str(err.value).startswith(err.value.parameter)

    check()


@pytest.mark.parametrize("make, param, bad", CASES, ids=[_id(c) for c in CASES])
def test_bad_argument_raises_a_validation_error_naming_it(make: Callable[..., Any], param: str,
                                                           bad: st.SearchStrategy) -> None:
    _check_case(make, param, bad, 20)


@pytest.mark.slow
@pytest.mark.parametrize("make, param, bad", CASES, ids=[_id(c) for c in CASES])
def test_bad_argument_many_draws(make: Callable[..., Any], param: str, bad: st.SearchStrategy) -> None:
    _check_case(make, param, bad, 300)


def test_an_action_outside_the_bounds_is_clipped_and_reported() -> None:
    """The documented choice (ChargingVectorEnv docstring): clip, warn once per env, count."""
    from qhil.envs import ChargingVectorEnv
    env = ChargingVectorEnv(regime="energies", n_envs=2, n_steps=3, tau=0.6)
    env.reset()
    with pytest.warns(RuntimeWarning, match=r"outside the bounds.*\[-0.3, 0.3\]"):
        _, _, _, _, info = env.step([5.0, 0.1])
    assert info["clipped"].tolist() == [True, False] and info["clipped_total"].tolist() == [1, 0]
    assert env.controls[:, 0].tolist() == [0.3, 0.1]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # once per env: no second warning
        _, _, _, _, info = env.step([-5.0, -5.0])
        assert info["clipped_total"].tolist() == [2, 1] and env.n_clipped == 3
        _, _, _, _, info = env.step([0.3 + 1e-9, 0.0])          # rounding: clipped, not reported
    assert info["clipped"].tolist() == [False, False] and env.controls[0, -1] == 0.3
    env.reset()
    assert env.n_clipped == 3                                  # life count kept; episode count reset
    with pytest.raises(ValidationError, match="actions"):
        env.step([np.nan, 0.0])


def test_supply_chain_actions() -> None:
    from qhil.envs import SupplyChainEnv
    env = SupplyChainEnv()
    env.reset(seed=0)
    for bad in (8, -1, 1.5, np.nan, "x"):
        with pytest.raises(ValidationError, match="action"):
            env.step(bad)
    cont = SupplyChainEnv(continuous=True)
    cont.reset(seed=0)
    with pytest.warns(RuntimeWarning, match=r"\[-1, 1\]"):
        info = cont.step([2.0, 0.0, -3.0])[4]
    assert info["clipped"] == 2 and cont.n_clipped == 2
    assert np.allclose(cont.played_fields[-1] / cont.field_strength, [1.0, 0.0, -1.0], atol=4 * cont.noise_level)
    with pytest.raises(ValidationError, match="action"):
        cont.step([np.inf, 0.0, 0.0])
