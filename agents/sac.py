"""Soft Actor-Critic for charging the Dicke battery (seed 000, Sec. III B), CleanRL style.

Read top to bottom: the hyperparameters, the two networks, then one update (Eqs. 14–18).

* Actor (Eq. 14): ã ~ N(μ_θ(s), σ_θ(s)²), a = tanh(ã) ∈ [−1, 1] (the *normalised* action),
  λ = (λ_max − λ_min)/2 · a + (λ_max + λ_min)/2 ∈ [λ_min, λ_max].
* Twin critics Q_φ1, Q_φ2 on (s, a) with a clipped double-Q target (Eq. 16):
  y = r + γ (1 − done) [min_j Q^targ_φj(s', a') − α log π(a'|s')],  a' ~ π(·|s').
* Polyak targets: φ^targ ← ρ φ^targ + (1 − ρ) φ.
* Actor loss (Eq. 17): E[α log π(a|s) − min_j Q_φj(s, a)].
* Temperature (Eq. 18): L(α) = E[α (−log π(a|s) − H̄)], with the target entropy H̄ (nats, on
  the normalised action) decaying from ``entropy_start`` to ``entropy_end``.
* Reward (Eq. 11): the replay buffer keeps ΔE and Δℰ separately; a sampled batch gets
  r = w(n) ΔE + (1 − w(n)) Δℰ with the env's w(n) (Eq. 12, or a fixed w) at the *current*
  step n, so transitions stored early (w ≈ 1, energy) are re-weighted towards ergotropy as
  training proceeds. The weight is the env's (:class:`~qhil.envs.charging.RewardWeight`).

Defaults (:class:`~qhil.agents.sac_config.SACConfig`, a torch-free module so the command
line starts fast) follow the public Dicke-battery SAC work (Erdman et al., PRL
2024, ``PaoloAE/paper_rl_battery``) as listed in issue 4: hidden (512, 256), batch 256,
Adam lr 1e-3, γ = 0.993, ρ = 0.995, replay 180k, 5,000 random warm-up steps, one update
per environment step, H̄ from 0.72 to −3 (the env's reward weight: w_mean = 40k and
w_width = 20k steps). The step schedules (the entropy decay here, the env's weight there) are
written for ``reference_steps`` and scaled by ``total_steps / reference_steps``
(:meth:`SACConfig.scaled`, ``RewardWeight.scaled(cfg.schedule_scale)``). ``updates_per_step``
may be below 1 (ours): with B batteries stepped together, 1/B gives one update per round,
i.e. B times the explored episodes for the same number of updates.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qhil.drivers import set_threads
from qhil.drivers.threads import default_threads
from .networks import Actor, SoftQ, mlp  # noqa: F401  (re-exported)
from .precision import probe_precision
from .sac_config import SACConfig

__all__ = ["SAC", "SACConfig", "Actor", "SoftQ", "mlp"]

class SAC:
    """The agent: networks, optimisers, temperature and the update of Eqs. (15)–(18).

    obs_dim:         observation length
    action_low/high: λ bounds (env units); the networks work on the normalised action.
    n_reward_terms:  2 for the battery ([ΔE, Δℰ]); the env's ``reward_weights(step)`` combine
                     them (the agent knows nothing of the weight of Eq. 11).
    """

    def __init__(self, obs_dim: int, action_low: float, action_high: float, config: SACConfig,
                 act_dim: int = 1, n_reward_terms: int = 2) -> None:
        self.cfg = config
        set_threads(torch=default_threads()["torch"])
        #: the precision the updates run in, and why (recorded with the run and its checkpoints)
        self.precision_info: dict[str, Any] = {"requested": config.precision, "chosen": config.precision}
        if config.precision == "auto":      # probe once per process and shape, before seeding
            probe = probe_precision(obs_dim + act_dim, tuple(config.hidden), int(config.batch_size))
            self.precision_info = {"requested": "auto", "chosen": probe["chosen"], "probe": dict(probe)}
        self.precision: str = self.precision_info["chosen"]
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.obs_dim, self.act_dim, self.n_reward_terms = obs_dim, act_dim, n_reward_terms
        self.scale = 0.5 * (action_high - action_low)       # Eq. (14)
        self.offset = 0.5 * (action_high + action_low)
        h = tuple(config.hidden)
        self.actor = Actor(obs_dim, act_dim, h)
        self.q1, self.q2 = SoftQ(obs_dim, act_dim, h), SoftQ(obs_dim, act_dim, h)
        self.q1_targ, self.q2_targ = SoftQ(obs_dim, act_dim, h), SoftQ(obs_dim, act_dim, h)
        self.q1_targ.load_state_dict(self.q1.state_dict())
        self.q2_targ.load_state_dict(self.q2.state_dict())
        for p in list(self.q1_targ.parameters()) + list(self.q2_targ.parameters()):
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.alpha_init), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr, fused=True)
        self.q_opt = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), lr=config.lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.lr, fused=True)
        self.n_updates = 0

    # -- acting ----------------------------------------------------------------------
    def to_env(self, a: np.ndarray) -> np.ndarray:
        """Normalised action → λ, Eq. (14)."""
        return self.scale * np.asarray(a) + self.offset

    def to_normalised(self, lam: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(lam) - self.offset) / self.scale, -1.0, 1.0)

    def random_action(self, n: int) -> np.ndarray:
        """Uniform λ for the warm-up, (n, act_dim), env units."""
        return self.to_env(self.rng.uniform(-1.0, 1.0, size=(n, self.act_dim)))

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """λ for a batch of observations (n, D) → (n, act_dim), env units."""
        o = torch.as_tensor(np.asarray(obs, np.float32))
        a = self.actor.deterministic(o) if deterministic else self.actor.sample(o)[0]
        return self.to_env(a.numpy().astype(float))

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    # -- learning --------------------------------------------------------------------
    def critic_target(self, rewards: torch.Tensor, next_obs: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Eq. (16): y = r + γ (1 − done) [min_j Q^targ_j(s', a') − α log π(a'|s')]."""
        with torch.no_grad():
            a2, logp2 = self.actor.sample(next_obs)
            q_next = torch.min(self.q1_targ(next_obs, a2), self.q2_targ(next_obs, a2))
            return rewards + self.cfg.gamma * (1.0 - dones) * (q_next - self.log_alpha.exp() * logp2)

    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        """One gradient step on critics, actor and temperature; then the Polyak update.

        With ``precision="bf16"`` the network layers run in bfloat16 under autocast (weights,
        optimiser state and all losses stay float32): about 2× faster on CPUs with AVX-512 BF16,
        ~10× slower where bf16 is emulated (AVX2). ``"auto"`` picks one by a start-up probe
        (:mod:`qhil.agents.precision`); :attr:`precision` is what runs.
        """
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self._update(batch, step)

    def _update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        obs = torch.as_tensor(batch["obs"])
        act = torch.as_tensor(batch["actions"])
        y = self.critic_target(torch.as_tensor(batch["rewards"]), torch.as_tensor(batch["next_obs"]),
                               torch.as_tensor(batch["dones"]))
        # critics, Eq. (15)
        q1, q2 = self.q1(obs, act), self.q2(obs, act)
        q_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()
        # actor, Eq. (17); the critics are constants here (no weight gradients: ~10% faster)
        critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        for p in critic_params:
            p.requires_grad_(False)
        a_pi, logp = self.actor.sample(obs)
        q_pi = torch.min(self.q1(obs, a_pi), self.q2(obs, a_pi))
        alpha = self.log_alpha.exp().detach()
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        for p in critic_params:
            p.requires_grad_(True)
        # temperature, Eq. (18)
        h_target = self.cfg.target_entropy(step)
        alpha_loss = (self.log_alpha.exp() * (-logp.detach() - h_target)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        # Polyak targets
        with torch.no_grad():
            rho = self.cfg.polyak
            for net, targ in ((self.q1, self.q1_targ), (self.q2, self.q2_targ)):
                torch._foreach_lerp_(list(targ.parameters()), list(net.parameters()), 1.0 - rho)
        self.n_updates += 1
        return {"q_loss": q_loss.item(), "actor_loss": actor_loss.item(), "alpha": float(alpha),
                "alpha_loss": alpha_loss.item(), "entropy": -logp.detach().mean().item(),
                "target_entropy": h_target, "q": 0.5 * (q1.detach().mean() + q2.detach().mean()).item()}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "q1": self.q1.state_dict(), "q2": self.q2.state_dict(),
                "q1_targ": self.q1_targ.state_dict(), "q2_targ": self.q2_targ.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(), "actor_opt": self.actor_opt.state_dict(),
                "q_opt": self.q_opt.state_dict(), "alpha_opt": self.alpha_opt.state_dict(),
                "n_updates": self.n_updates, "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict(),
                "precision": self.precision_info}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for name in ("actor", "q1", "q2", "q1_targ", "q2_targ"):
            getattr(self, name).load_state_dict(d[name])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        for name in ("actor_opt", "q_opt", "alpha_opt"):
            getattr(self, name).load_state_dict(d[name])
        self.n_updates = d["n_updates"]
        self.rng.bit_generator.state = d["rng"]
        torch.set_rng_state(d["torch_rng"])
