"""Evaluation episodes: one per seed, played as gymnasium plays them one env at a time, and no env stepped past
the end of its episode."""

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.lunar_lander import heuristic

import jaxrl_lander.training.evaluate as evaluate
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.training.evaluate import play_seeds, run_episodes

SEEDS = [3, 11, 42, 1000]


class _Discrete:  # what gymnasium's heuristic reads of its env
    continuous = False

    @property
    def unwrapped(self):
        return self


def heuristic_batch(obs: np.ndarray) -> np.ndarray:
    return np.array([heuristic(_Discrete(), o) for o in obs])


def one_at_a_time(seed: int, act, **options) -> dict:
    env = gym.make("LunarLander-v3", **options)
    obs, _ = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs[None])[0])
        total, length, done = total + float(reward), length + 1, terminated or truncated
    env.close()
    return {"seed": seed, "return": total, "length": length}


def test_episodes_are_gymnasiums_one_env_at_a_time_and_no_env_steps_past_its_end(monkeypatch):
    steps, make = [0], EnvChoice.make

    def counting_env(self, **kwargs):
        env = make(self, **kwargs)
        step = env.step

        def counted(action):
            steps[0] += 1
            return step(action)

        env.step = counted
        return env

    monkeypatch.setattr(EnvChoice, "make", counting_env)
    calls = []
    act = lambda obs: calls.append(obs.shape) or heuristic_batch(obs)  # noqa: E731
    played = play_seeds(act, EnvChoice("LunarLander-v3"), SEEDS)
    expected = [one_at_a_time(seed, heuristic_batch) for seed in SEEDS]
    assert played == expected  # returns to the last bit, lengths, seeds, in the order given
    assert len({e["length"] for e in expected}) > 1  # episodes of different lengths: the case that matters
    assert steps[0] == sum(e["length"] for e in expected)  # not len(SEEDS) x the longest
    assert calls == [(len(SEEDS), 8)] * max(e["length"] for e in expected)  # one shape: compiled once


def test_run_episodes_seeds_episode_j_with_seed_plus_j_in_batches(monkeypatch):
    monkeypatch.setattr(evaluate, "MAX_PARALLEL_EPISODES", 3)
    batches = []
    played = run_episodes(heuristic_batch, EnvChoice("LunarLander-v3"), 5, seed=20, played=batches.append)
    assert [e["seed"] for e in played] == [20, 21, 22, 23, 24] and batches == [3, 5]
    assert played == [one_at_a_time(seed, heuristic_batch) for seed in range(20, 25)]


def test_evaluation_episodes_play_the_env_options():
    windy = {"enable_wind": True, "wind_power": 20.0, "turbulence_power": 2.0, "gravity": -11.5}
    played = play_seeds(heuristic_batch, EnvChoice("LunarLander-v3", windy), SEEDS)
    assert played == [one_at_a_time(seed, heuristic_batch, **windy) for seed in SEEDS]
    calm = play_seeds(heuristic_batch, EnvChoice("LunarLander-v3"), SEEDS)
    assert [e["return"] for e in played] != [e["return"] for e in calm]  # the options changed the episodes


def test_a_missing_default_env_experiment_points_at_the_same_run_on_other_envs(tmp_path):
    """`make eval ALGO=ppo SEED=3` names ppo_seed3: when only runs of other envs exist, the error names them (the
    same algorithm and seed only)."""
    import pytest

    from jaxrl_lander.config.errors import UnreadableModel
    from jaxrl_lander.storage.files import model_path

    experiments = tmp_path / "experiments"
    for name in ("ppo_continuous_seed3", "ppo_wind15.0-turb1.5_seed3", "a2c_continuous_seed3", "ppo_continuous_seed31"):
        (experiments / name).mkdir(parents=True)
    with pytest.raises(UnreadableModel) as caught:
        model_path(experiments / "ppo_seed3")
    assert str(caught.value).endswith("(expected ppo_seed3_model); on other envs: ppo_continuous_seed3,"
                                      " ppo_wind15.0-turb1.5_seed3")
    with pytest.raises(UnreadableModel) as caught:
        model_path(experiments / "a2c_seed4")
    assert str(caught.value).endswith("(expected a2c_seed4_model)")
