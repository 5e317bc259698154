"""Autoreset, termination and time-limit truncation on a hand-built env, and the real LunarLander vector env."""

import subprocess
import sys

import jax
import numpy as np
import probe_envs  # noqa: F401  (registers the hand-built envs)
import pytest
from helpers import pooled_moments

from jaxrl_lander.training.collect import RolloutBuffer
from jaxrl_lander.envs.gymnasium import make_vector_env, step_envs
from jaxrl_lander.envs.normalization import Normalizer
from jaxrl_lander.training.seeding import EVAL_SEED_OFFSET, TRAIN_SEED_RANGE, eval_env_seed, train_env_seed

GAMMA = 0.9


def value_of(obs: np.ndarray) -> np.ndarray:
    """A stand-in critic: V(s) = 10 * steps taken."""
    return 10.0 * obs[:, 0]


def test_termination_truncation_and_autoreset_on_hand_built_episodes():
    envs = make_vector_env("JaxrlLanderTest/Countdown-v0", 2)
    obs, _ = envs.reset(seed=0)
    buffer = RolloutBuffer(n_steps=4, num_envs=2, obs_dim=1)
    # env 0 terminates at its 2nd step; env 1 never acts 1, so the time limit cuts it at its 3rd step.
    episodes = []
    for actions in ([0, 0], [1, 0], [0, 0], [0, 0]):
        out = step_envs(envs, np.array(actions), value_of, GAMMA)
        buffer.add(obs, np.array(actions), out.rewards, out.dones)
        episodes += out.episodes
        obs = out.obs
    envs.close()

    # Every stored transition is a real step: the observation sequences restart at 0 right after an end,
    # with no reset-only transition in between.
    np.testing.assert_array_equal(buffer.obs[:, 0, 0], [0, 1, 0, 1])
    np.testing.assert_array_equal(buffer.obs[:, 1, 0], [0, 1, 2, 0])
    np.testing.assert_array_equal(buffer.dones[:, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(buffer.dones[:, 1], [0, 0, 1, 0])
    # Termination (env 0, t = 1): reward 1, nothing bootstrapped.
    assert buffer.rewards[1, 0] == pytest.approx(1.0)
    # Truncation (env 1, t = 2): reward 1 + gamma * V(true final obs [3]) = 1 + 0.9 * 30.
    assert buffer.rewards[2, 1] == pytest.approx(1.0 + GAMMA * 30.0)
    # Elsewhere plain rewards.
    assert np.count_nonzero(buffer.rewards != 1.0) == 1
    # Episode statistics come from the real episodes (return excludes the bootstrap).
    assert sorted(episodes) == [(0, 2.0, 2), (1, 3.0, 3)]


def test_reward_scale_applies_to_learning_targets_not_to_episode_returns():
    envs = make_vector_env("JaxrlLanderTest/Countdown-v0", 2)
    envs.reset(seed=0)
    rewards, episodes = [], []
    for actions in ([0, 0], [1, 0], [0, 0]):
        out = step_envs(envs, np.array(actions), value_of, GAMMA, reward_scale=0.1)
        rewards.append(out.rewards)
        episodes += out.episodes
    envs.close()
    # Env rewards (1 each) scaled to 0.1; the truncation bootstrap is in value units and is not scaled:
    # env 1, cut at its 3rd step, gets 0.1 + 0.9 * V([3]) = 0.1 + 27.
    np.testing.assert_allclose(rewards, [[0.1, 0.1], [0.1, 0.1], [0.1, 0.1 + GAMMA * 30.0]], rtol=1e-6)
    assert sorted(episodes) == [(0, 2.0, 2), (1, 3.0, 3)]


def test_normalizer_standardises_observations_and_the_bootstrap_and_scales_rewards():
    envs = make_vector_env("JaxrlLanderTest/Countdown-v0", 2)
    obs, _ = envs.reset(seed=0)
    normalizer = Normalizer(obs_dim=1, num_envs=2, gamma=GAMMA, observations=True, rewards=True)
    normalizer.observations(obs)
    for actions in ([0, 0], [1, 0], [0, 0]):
        out = step_envs(envs, np.array(actions), value_of, GAMMA, normalizer=normalizer)
    envs.close()
    # Observations seen: the reset's [0, 0], then [1, 1], [0, 2] (env 0 terminated and restarted), [1, 0]
    # (env 1 cut by the time limit at obs 3 and restarted). Discounted returns of the rewards (1 each): [1, 1],
    # [1.9, 1.9], then [1, 2.71] (env 0's restarted).
    obs_mean, obs_var = pooled_moments(np.array([0, 0, 1, 1, 0, 2, 1, 0], np.float64)[:, None])
    _, ret_var = pooled_moments(np.array([1, 1, 1.9, 1.9, 1, 2.71]))
    standardized = lambda x: (x - obs_mean[0]) / np.sqrt(obs_var[0] + 1e-8)  # noqa: E731
    np.testing.assert_allclose(out.obs[:, 0], standardized(np.array([1.0, 0.0])), rtol=1e-6)
    reward = 1.0 / np.sqrt(ret_var + 1e-8)
    # The bootstrap values the standardised true final observation [3], in the normalised reward's units.
    np.testing.assert_allclose(out.rewards, [reward, reward + GAMMA * value_of(standardized(np.array([[3.0]])))[0]],
                               rtol=1e-6)


def test_lunar_lander_vector_env_shapes_and_seeding():
    envs = make_vector_env("LunarLander-v3", 4)
    obs_a, _ = envs.reset(seed=123)
    assert obs_a.shape == (4, 8) and obs_a.dtype == np.float32
    assert envs.single_action_space.n == 4
    # Sub-envs get distinct seeds (base + i): their first observations differ.
    assert len({tuple(o) for o in obs_a}) == 4
    obs_b, _ = envs.reset(seed=123)
    np.testing.assert_array_equal(obs_a, obs_b)
    envs.close()


def test_training_and_evaluation_seeds_are_disjoint():
    keys = jax.random.split(jax.random.key(42), 2)
    train_bases = [train_env_seed(keys[0], t) for t in (0, 1000, 49_000)]
    assert all(0 <= b < TRAIN_SEED_RANGE for b in train_bases)
    assert len(set(train_bases)) == 3  # a resume at another step gets other env seeds
    assert eval_env_seed(keys[1]) >= EVAL_SEED_OFFSET > TRAIN_SEED_RANGE + 1024


def test_the_allow_list_knows_each_envs_shape_as_gymnasium_makes_it():
    """check_env answers from the allow-list without making an env: the list must say what the real envs are."""
    import gymnasium as gym

    from jaxrl_lander.config import ENV_IDS
    from jaxrl_lander.envs.gymnasium import check_env

    for env_id in ("LunarLander-v3", "LunarLanderContinuous-v3", "JaxrlLanderTest/Countdown-v0"):
        env = gym.make(env_id)
        shape = ENV_IDS[env_id]
        assert env.observation_space.shape == (shape.obs_dim,), env_id
        if shape.continuous:
            assert isinstance(env.action_space, gym.spaces.Box), env_id
            assert env.action_space.shape == (shape.action_size,), env_id
            np.testing.assert_array_equal(env.action_space.low, -1.0)  # what policy.env_action clips to
            np.testing.assert_array_equal(env.action_space.high, 1.0)
        else:
            assert env.action_space.n == shape.action_size, env_id
        assert check_env(env_id) == shape
        env.close()


def test_checking_an_env_makes_none(monkeypatch):
    import gymnasium as gym

    from jaxrl_lander.envs.gymnasium import check_env

    def no_make(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(gym, "make", no_make)
    monkeypatch.setattr(gym, "make_vec", no_make)
    assert check_env("LunarLander-v3") == (8, 4, False)


@pytest.mark.needs("envpool")
def test_the_command_lines_envpool_registers_box2d_alone_and_still_makes_lunarlander():
    """The command line's hook spares envpool's registration of every other family (start-up time): its
    LunarLander pool works, and envpool knows no Atari env; once envpool is imported the hook changes nothing."""
    probe = ("import sys\n"
             "from jaxrl_lander.cli.hooks import envpool_box2d_only\n"
             "if sys.argv[1] == 'after': import envpool\n"
             "envpool_box2d_only()\n"
             "from jaxrl_lander.envs.envpool import make_pool\n"
             "pool = make_pool('LunarLander-v3', [0, 1])\n"
             "import envpool\n"
             "ids = envpool.list_all_envs()\n"
             "print(pool.first_obs.shape, 'LunarLander-v3' in ids, 'Pong-v5' in ids)\n")
    for when, atari in (("before", False), ("after", True)):
        out = subprocess.run([sys.executable, "-c", probe, when], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["(2,", "8)", "True", str(atari)], out.stderr
