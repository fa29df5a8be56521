"""SAC's log π(a|s) against the squashed-Gaussian density written out independently.

The actor samples u ~ N(μ(s), σ(s)²) per action dimension and plays the *normalised* action
a = tanh(u) ∈ (−1, 1); the critics, the actor loss and the entropy target all work on a
(agents/sac.py: "H̄ nats, on the normalised action"). Its density is, by the change of
variables u → a,

    log π(a|s) = Σ_i [log N(u_i; μ_i, σ_i) − log(1 − tanh² u_i)].

The env action λ = scale·a + offset is a further affine map whose Jacobian (−Σ log scale)
is deliberately *not* in log π: the test pins that too (scale 0.3 shifts the density by
+1.204 nats per dimension, far above the tolerance).
"""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from qhil.agents.sac import SAC, Actor, SACConfig


def analytic_log_density(u: np.ndarray, mu: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """Σ_i log N(u_i; μ_i, σ_i) − log(1 − tanh² u_i), float64; the tanh term computed stably as
    log(1 − tanh² u) = 2 (log 2 − u − softplus(−2u))."""
    gauss = norm.logpdf(u, loc=mu, scale=np.exp(log_std))
    log_jac = 2.0 * (math.log(2.0) - u - np.logaddexp(0.0, -2.0 * u))
    return (gauss - log_jac).sum(-1)


def sample_with_noise(actor: Actor, obs: torch.Tensor, seed: int):
    """The actor's (a, log π) and, from the same generator state, its μ, log σ and the
    pre-squash sample u = μ + σ ε (ε re-drawn identically: forward() draws no random numbers)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        a, logp = actor.sample(obs)
    torch.manual_seed(seed)
    with torch.no_grad():
        mu, log_std = actor(obs)
        eps = torch.randn_like(mu)
    mu, log_std, eps = (t.double().numpy() for t in (mu, log_std, eps))
    return a.double().numpy(), logp.double().numpy(), mu, log_std, mu + np.exp(log_std) * eps


@pytest.mark.parametrize("act_dim", [1, 3])
def test_log_prob_matches_the_squashed_gaussian_density(act_dim):
    torch.manual_seed(0)
    actor = Actor(obs_dim=5, act_dim=act_dim, hidden=(16, 16))
    with torch.no_grad():                       # spread μ and log σ over most of their range [−5, 2]
        actor.mu.weight.normal_(0.0, 2.0)
        actor.log_std.weight.normal_(0.0, 3.0)
        actor.log_std.bias.fill_(-1.0)
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(2048, 5)), dtype=torch.float32)
    a, logp, mu, log_std, u = sample_with_noise(actor, obs, seed=3)
    assert np.allclose(a, np.tanh(u), atol=1e-6)                      # the played action is tanh(u)
    expect = analytic_log_density(u, mu, log_std)
    # The actor adds 1e-6 inside log(1 − a² + 1e-6) (a float32 guard): it lowers each term's
    # Jacobian by ≤ 1e-6/(1 − a²). Away from saturation the two agree to float32 rounding.
    sat = (1.0 - a ** 2).min(-1)
    fine = sat > 1e-2
    assert fine.sum() > 300 and log_std.min() < -3 and log_std.max() > 1      # a real spread was tested
    tol = 2e-4 * (1 + np.abs(expect[fine])) + act_dim * 1e-6 / sat[fine]
    assert np.all(np.abs(logp[fine] - expect[fine]) <= tol), np.max(np.abs(logp[fine] - expect[fine]))
    # near saturation the guard bounds log π from above by −Σ log(1e-6)-ish, never NaN or +inf
    assert np.all(np.isfinite(logp))


def test_log_prob_is_a_normalised_density_over_the_normalised_action():
    """One dimension, fixed state: if π is the density of a, then E_π[1{|a| < c}/π(a)] = 2c
    (Monte Carlo over the actor's own samples and log π; no formula of ours involved).
    Fails if log π missed the tanh Jacobian or added the λ scale."""
    torch.manual_seed(0)
    actor = Actor(obs_dim=2, act_dim=1, hidden=(8, 8))
    obs = torch.zeros(200_000, 2)
    torch.manual_seed(5)
    with torch.no_grad():
        a, logp = actor.sample(obs)
    a, logp = a.double().numpy()[:, 0], logp.double().numpy()
    c = 0.9
    inside = np.abs(a) < c
    length = np.mean(np.exp(-logp) * inside)          # E_π[1{|a|<c}/π(a)] = ∫_{−c}^{c} da = 2c
    assert length == pytest.approx(2 * c, rel=0.03)


def test_log_prob_is_for_the_normalised_action_not_the_rescaled_lambda():
    """The agent's λ = 0.3·a: log π carries no −log 0.3 Jacobian (the entropy target H̄ is
    stated on the normalised action). Adding it would move every value by +1.204."""
    agent = SAC(obs_dim=4, action_low=-0.3, action_high=0.3, config=SACConfig(hidden=(8, 8), seed=0))
    obs = torch.as_tensor(np.random.default_rng(2).normal(size=(64, 4)), dtype=torch.float32)
    a, logp, mu, log_std, u = sample_with_noise(agent.actor, obs, seed=9)
    lam = agent.to_env(a)
    assert np.allclose(lam, 0.3 * np.tanh(u), atol=1e-6)
    density_of_a = analytic_log_density(u, mu, log_std)
    density_of_lam = density_of_a - np.log(agent.scale)
    fine = (1 - a ** 2).min(-1) > 1e-2
    assert np.allclose(logp[fine], density_of_a[fine], atol=1e-3)
    assert np.all(np.abs(logp[fine] - density_of_lam[fine]) > 1.0)
