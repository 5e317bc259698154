"""Running normalisation of observations and rewards, checked against direct computations over whole histories."""

import numpy as np
import pytest
from helpers import pooled_moments

from jaxrl_lander.envs.normalization import CLIP, PRIOR_COUNT, Normalizer, RunningMeanStd, observation_function


def test_running_moments_equal_the_pooled_moments_of_every_batch():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 8, 30)]  # a batch of one has zero variance
    stats = RunningMeanStd((4,))
    for batch in batches:
        stats.update(batch)
    mean, var = pooled_moments(np.concatenate(batches))
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.var, var, rtol=1e-10)
    assert stats.count == pytest.approx(46 + PRIOR_COUNT)


def test_observations_are_standardised_with_the_statistics_including_them_and_clipped():
    normalizer = Normalizer(obs_dim=2, num_envs=3, gamma=0.99, observations=True, rewards=False)
    first = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]], np.float32)
    out = normalizer.observations(first)
    mean, var = pooled_moments(first.astype(np.float64))
    np.testing.assert_allclose(out[:, 0], (first[:, 0] - mean[0]) / np.sqrt(var[0] + 1e-8), rtol=1e-6)
    assert out.dtype == np.float32 and np.all(out[:, 1] == 0.0)
    # A far outlier is clipped, and update=False leaves the statistics alone.
    count = normalizer.obs_stats.count
    far = normalizer.observations(np.array([[1e6, 0.0]] * 3, np.float32), update=False)
    assert np.all(far[:, 0] == CLIP) and normalizer.obs_stats.count == count


def test_rewards_are_divided_by_the_std_of_the_discounted_returns_so_far():
    gamma = 0.9
    rng = np.random.default_rng(1)
    rewards = rng.normal(0.0, 5.0, size=(80, 2))
    rewards[70, 0] = 1e4  # a reward far beyond the returns seen so far: clipped at CLIP
    dones = np.zeros((80, 2), bool)
    dones[[5, 12, 30], 0] = True
    dones[[20], 1] = True
    normalizer = Normalizer(obs_dim=8, num_envs=2, gamma=gamma, observations=False, rewards=True)

    running = np.zeros(2)
    returns_seen = []
    for t in range(80):
        out = normalizer.rewards(rewards[t], dones[t])
        running = running * gamma + rewards[t]  # each env's discounted return, restarting after its episode ends
        returns_seen.append(running.copy())
        _, var = pooled_moments(np.concatenate(returns_seen))
        expected = np.clip(rewards[t] / np.sqrt(var + 1e-8), -CLIP, CLIP)
        np.testing.assert_allclose(out, expected, rtol=1e-9)
        running[dones[t]] = 0.0
        assert (out[0] == CLIP) == (t == 70)


def test_state_round_trip_continues_the_statistics_and_restarts_the_returns():
    rng = np.random.default_rng(2)
    a = Normalizer(obs_dim=3, num_envs=2, gamma=0.99, observations=True, rewards=True)
    for _ in range(5):
        a.observations(rng.normal(size=(2, 3)).astype(np.float32))
        a.rewards(rng.normal(size=2), np.zeros(2, bool))
    b = Normalizer(obs_dim=3, num_envs=2, gamma=0.99, observations=True, rewards=True)
    b.load_state_dict(a.state_dict())
    obs = rng.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_array_equal(b.observations(obs), a.observations(obs))
    assert np.all(b.returns == 0.0) and b.return_stats.var == a.return_stats.var
    # A saved model standardises as the normaliser did when it was saved.
    np.testing.assert_array_equal(observation_function(a.observation_spec())(obs),
                                  a.observations(obs, update=False))
    assert observation_function(None) is None


def test_a_normaliser_of_rewards_only_passes_observations_through():
    normalizer = Normalizer(obs_dim=2, num_envs=1, gamma=0.99, observations=False, rewards=True)
    obs = np.array([[100.0, -100.0]], np.float32)
    assert normalizer.observations(obs) is obs and normalizer.observation_spec() is None
    assert normalizer.state_dict()["observations"] is None
