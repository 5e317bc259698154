"""PPO and A2C losses against independent numpy arithmetic, and the optimisers' PyTorch semantics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lander.core.algos import a2c, ppo
from jaxrl_lander.core.algos.base import Batch, Rollout, all_finite, init_state
from jaxrl_lander.config import make_config
from jaxrl_lander.core.policy import ActorCritic

N, OBS_DIM, ACTIONS = 16, 8, 4


@pytest.fixture
def setup():
    policy = ActorCritic(action_size=ACTIONS)
    rng = np.random.default_rng(0)
    params = policy.init(jax.random.key(0), jnp.zeros((1, OBS_DIM)))
    batch = Batch(
        obs=jnp.asarray(rng.normal(size=(N, OBS_DIM)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, ACTIONS, size=N), jnp.int32),
        old_log_probs=jnp.asarray(np.log(rng.uniform(0.1, 0.5, size=N)), jnp.float32),
        old_values=jnp.zeros(N),
        advantages=jnp.asarray(rng.normal(size=N), jnp.float32),
        returns=jnp.asarray(rng.normal(size=N), jnp.float32),
    )
    dist, values = policy.apply(params, batch.obs)
    logits, values = np.asarray(dist.logits, np.float64), np.asarray(values, np.float64)
    return policy, params, batch, logits, values


def _np_log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_reference(logits, values, batch, normalize):
    log_p = _np_log_softmax(logits)
    new_logp = log_p[np.arange(N), np.asarray(batch.actions)]
    adv = np.asarray(batch.advantages, np.float64)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    ent = -(np.exp(log_p) * log_p).sum(-1).mean()
    value_loss = ((np.asarray(batch.returns) - values) ** 2).mean()
    return new_logp, adv, ent, value_loss


@pytest.mark.parametrize("normalize", [True, False])
def test_ppo_loss_matches_numpy(setup, normalize):
    policy, params, batch, logits, values = setup
    hp = ppo.HParams(gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, vf_coef=0.5,
                     normalize_advantage=normalize)
    new_logp, adv, ent, value_loss = _np_reference(logits, values, batch, normalize)
    ratio = np.exp(new_logp - np.asarray(batch.old_log_probs))
    pg = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).mean()
    expected = pg + 0.5 * value_loss - 0.01 * ent

    for fn in (ppo.loss, jax.jit(ppo.loss, static_argnums=1)):
        total, info = fn(params, policy, batch, hp)
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        np.testing.assert_allclose(info["policy_loss"], pg, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info["value_loss"], value_loss, rtol=1e-5)
        np.testing.assert_allclose(info["entropy"], ent, rtol=1e-5)
        np.testing.assert_allclose(info["clip_fraction"], np.mean(np.abs(ratio - 1) > 0.2), rtol=1e-6)
        assert info["clip_fraction"] > 0  # the random old log-probs make some ratios clip: the test sees clipping


def test_ppo_at_ratio_one_has_zero_kl_and_no_clipping(setup):
    policy, params, batch, logits, _ = setup
    logp = _np_log_softmax(logits)[np.arange(N), np.asarray(batch.actions)]
    batch = batch._replace(old_log_probs=jnp.asarray(logp, jnp.float32))
    hp = ppo.HParams(gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.0,
                     normalize_advantage=True)
    total, info = ppo.loss(params, policy, batch, hp)
    np.testing.assert_allclose(info["approx_kl"], 0.0, atol=1e-6)
    assert float(info["clip_fraction"]) == 0.0
    np.testing.assert_allclose(total, 0.0, atol=1e-5)  # -mean of standardised advantages


@pytest.mark.parametrize("normalize", [True, False])
def test_a2c_loss_matches_numpy(setup, normalize):
    policy, params, batch, logits, values = setup
    hp = a2c.HParams(gamma=0.99, gae_lambda=1.0, ent_coef=0.05, vf_coef=0.5, normalize_advantage=normalize)
    new_logp, adv, ent, value_loss = _np_reference(logits, values, batch, normalize)
    pg = -(adv * new_logp).mean()
    total, info = jax.jit(a2c.loss, static_argnums=1)(params, policy, batch, hp)
    np.testing.assert_allclose(total, pg + 0.5 * value_loss - 0.05 * ent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["policy_loss"], pg, rtol=1e-5, atol=1e-6)


def test_a2c_rmsprop_matches_pytorch_update_rule():
    """PyTorch RMSprop: v = a v + (1 - a) g^2 (v0 = 0); p -= lr g / (sqrt(v) + eps)."""
    config = make_config("a2c", {"max_grad_norm": 1e9})
    tx = a2c.make_optimizer(config)
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    v = np.zeros(2)
    p = np.array([1.0, -2.0])
    for g in ([0.5, -1.0], [0.1, 0.3], [-0.2, 0.0]):
        g = np.array(g)
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
        v = 0.99 * v + 0.01 * g**2
        p = p - 7e-4 * g / (np.sqrt(v) + 1e-5)
    np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def test_a2c_adam_matches_hand_computed_steps():
    # Adam with bias correction: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    # step = -lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    config = make_config("a2c", {"optimizer": "adam", "learning_rate": 1e-3, "adam_eps": 1e-8,
                                 "max_grad_norm": 1e9})
    tx = a2c.make_optimizer(config)
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    m = v = np.zeros(2)
    p = np.array([1.0, -2.0])
    for t, g in enumerate(([0.5, -1.0], [0.1, 0.3], [-0.2, 0.0]), start=1):
        g = np.array(g)
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        p = p - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def test_gradient_clipping_is_by_global_norm():
    # Gradient (3, 4) has global norm 5: scaled as a whole to (0.6, 0.8), not clipped leaf by leaf to (1, 1).
    # With RMSprop eps = 1 the first update is -lr * g / (sqrt(0.01 g^2) + 1), which shows the clipped g.
    config = make_config("a2c", {"max_grad_norm": 1.0, "learning_rate": 1.0, "rms_eps": 1.0})
    tx = a2c.make_optimizer(config)
    params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    updates, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(params), params)
    g = np.array([0.6, 0.8])
    expected = -g / (0.1 * g + 1.0)
    chex.assert_trees_all_close(updates, {"a": expected[:1], "b": expected[1:]}, rtol=1e-5)


def test_update_changes_params_and_threads_key():
    config = make_config("ppo")
    policy = ActorCritic(action_size=ACTIONS)
    tx = ppo.make_optimizer(config)
    state = init_state(policy=policy, tx=tx, key=jax.random.key(1), obs_dim=OBS_DIM)
    rng = np.random.default_rng(1)
    rollout = Rollout(
        obs=jnp.asarray(rng.normal(size=(256, 8, OBS_DIM)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, ACTIONS, size=(256, 8)), jnp.int32),
        rewards=jnp.asarray(rng.normal(size=(256, 8)), jnp.float32),
        dones=jnp.asarray(rng.uniform(size=(256, 8)) < 0.01, jnp.float32),
        last_obs=jnp.zeros((8, OBS_DIM)),
    )
    hp = ppo.HParams.from_config(config)
    new_state, metrics = jax.jit(
        lambda s, r, h: ppo.update(s, r, h, policy=policy, tx=tx, n_epochs=2, num_minibatches=32)
    )(state, rollout, hp)
    assert not jax.random.key_data(new_state.key).tolist() == jax.random.key_data(state.key).tolist()
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, state.params)
    assert all(m > 0 for m in jax.tree.leaves(moved))
    assert set(metrics) >= {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                            "explained_variance"}
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_annealed_learning_rate_decays_linearly_to_zero():
    config = make_config("a2c", {"anneal_lr": True, "total_timesteps": 400, "learning_rate": 1.0,
                                 "max_grad_norm": 1e9, "rms_eps": 1e6})  # eps >> sqrt(v): update = -lr * g / eps
    tx = a2c.make_optimizer(config)  # 400 / 40 = 10 updates: lr = 1 - k / 10 at update k
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    steps = []
    for _ in range(11):
        updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
        steps.append(-float(updates["w"][0]) * 1e6)
    np.testing.assert_allclose(steps, [1 - k / 10 for k in range(11)], atol=1e-3)


def test_all_finite_flags_any_nan_or_inf_leaf():
    tree = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
    assert bool(all_finite(tree))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        broken = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2)).at[1, 0].set(bad)}}
        assert not bool(jax.jit(all_finite)(broken))


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_an_update_takes_in_its_state_only_when_finite_and_alive(algo):
    """The update leaves the state as it was when its loss is not finite, or when the agent failed before
    (alive False): a program running many updates in a row keeps a failed agent's last good state."""
    from jaxrl_lander.core.algos import make_learner

    small = {"batch_size": 16, "n_epochs": 1} if algo == "ppo" else {}
    config = make_config(algo, {"n_steps": 8, "num_envs": 2, **small})
    learner = make_learner(config, obs_dim=8, action_size=4)
    state = learner.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    rollout = Rollout(rng.normal(size=(8, 2, 8)).astype(np.float32), rng.integers(0, 4, (8, 2)).astype(np.int32),
                      rng.normal(size=(8, 2)).astype(np.float32), np.zeros((8, 2), np.float32),
                      rng.normal(size=(2, 8)).astype(np.float32))
    kept = lambda new: all(np.array_equal(a, b) for a, b in zip(  # noqa: E731
        jax.tree.leaves(jax.random.key_data(new.key)) + jax.tree.leaves(new.params),
        jax.tree.leaves(jax.random.key_data(state.key)) + jax.tree.leaves(state.params)))
    learned, metrics = learner.update(state, rollout)
    assert np.isfinite(metrics["loss"]) and not kept(learned)  # the check can fail
    overflowing = rollout._replace(rewards=np.full_like(rollout.rewards, 3e38))  # its square overflows
    frozen, metrics = learner.update(state, overflowing)
    assert not np.isfinite(metrics["loss"]) and kept(frozen)
    failed_before, metrics = learner.update(state, rollout, alive=np.bool_(False))
    assert np.isfinite(metrics["loss"]) and kept(failed_before)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_continuous_losses_match_numpy(algo):
    """The same losses over a Gaussian policy: log-probs of unclipped actions (some beyond the bounds) summed
    over the action's two dimensions, the entropy of a diagonal Gaussian, by numpy in float64."""
    policy = ActorCritic(action_size=2, continuous=True)
    rng = np.random.default_rng(3)
    params = policy.init(jax.random.key(0), jnp.zeros((1, OBS_DIM)))
    params = {"params": {**params["params"], "log_std": jnp.array([-0.3, 0.4], jnp.float32)}}
    batch = Batch(
        obs=jnp.asarray(rng.normal(size=(N, OBS_DIM)), jnp.float32),
        actions=jnp.asarray(rng.normal(scale=1.5, size=(N, 2)), jnp.float32),
        old_log_probs=jnp.asarray(rng.normal(-2.5, 0.5, size=N), jnp.float32),
        old_values=jnp.zeros(N),
        advantages=jnp.asarray(rng.normal(size=N), jnp.float32),
        returns=jnp.asarray(rng.normal(size=N), jnp.float32),
    )
    assert np.abs(np.asarray(batch.actions)).max() > 1.0  # learned from as sampled, not clipped
    dist, values = policy.apply(params, batch.obs)
    mean, values = np.asarray(dist.mean, np.float64), np.asarray(values, np.float64)
    sigma = np.exp(np.array([-0.3, 0.4]))
    new_logp = (-0.5 * ((np.asarray(batch.actions) - mean) / sigma) ** 2 - np.log(sigma)
                - 0.5 * np.log(2 * np.pi)).sum(-1)
    ent = (np.log(sigma) + 0.5 * (1 + np.log(2 * np.pi))).sum()
    adv = np.asarray(batch.advantages, np.float64)
    adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    value_loss = ((np.asarray(batch.returns) - values) ** 2).mean()
    if algo == "ppo":
        hp = ppo.HParams(gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, vf_coef=0.5,
                         normalize_advantage=True)
        ratio = np.exp(new_logp - np.asarray(batch.old_log_probs))
        pg = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).mean()
        loss = ppo.loss
    else:
        hp = a2c.HParams(gamma=0.99, gae_lambda=1.0, ent_coef=0.01, vf_coef=0.5, normalize_advantage=True)
        pg, loss = -(adv * new_logp).mean(), a2c.loss
    for fn in (loss, jax.jit(loss, static_argnums=1)):
        total, info = fn(params, policy, batch, hp)
        np.testing.assert_allclose(info["policy_loss"], pg, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(info["entropy"], ent, rtol=1e-6)
        np.testing.assert_allclose(total, pg + 0.5 * value_loss - 0.01 * ent, rtol=1e-4, atol=1e-6)
    grads = jax.grad(lambda p: loss(p, policy, batch, hp)[0])(params)
    assert float(jnp.abs(grads["params"]["log_std"]).max()) > 0  # the log-std learns
