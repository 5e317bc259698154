"""`make parity CONFIG=...`: a jaxrl_lander config turned into Stable-Baselines3's keyword arguments.

The benchmark itself needs SB3's own venv; this checks only the translation, which runs in ours.
"""

from pathlib import Path

import pytest
from helpers import bench_module

from jaxrl_lander.config import ConfigError, load_config, make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sb3_hyperparameters():
    return bench_module("parity").sb3_hyperparameters


def test_a2c_long_translates_to_sb3_rmsprop(sb3_hyperparameters):
    kwargs = sb3_hyperparameters(load_config(ROOT / "configs" / "a2c_long.toml"))
    assert kwargs == {
        "learning_rate": 4e-4, "linear_lr": True, "n_steps": 5, "gamma": 0.995, "gae_lambda": 1.0,
        "ent_coef": 1e-5, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize_advantage": False,
        "policy_kwargs": {"net_arch": [64, 64]}, "rms_prop_eps": 1e-5,
    }


def test_ppo_and_adam_a2c_carry_their_optimiser_settings(sb3_hyperparameters):
    ppo = sb3_hyperparameters(load_config(ROOT / "configs" / "ppo_solve.toml"))
    assert (ppo["n_steps"], ppo["batch_size"], ppo["n_epochs"], ppo["gamma"], ppo["gae_lambda"]) == (
        256, 64, 10, 0.999, 0.98)
    assert ppo["linear_lr"] is False and ppo["policy_kwargs"]["optimizer_kwargs"] == {"eps": 1e-5}
    adam = sb3_hyperparameters(make_config("a2c", {"optimizer": "adam", "adam_eps": 1e-8, "hidden_size": 128}))
    assert adam["use_rms_prop"] is False and "rms_prop_eps" not in adam
    assert adam["policy_kwargs"] == {"net_arch": [128, 128], "optimizer_kwargs": {"eps": 1e-8}}


def test_normalisation_translates_to_vecnormalize(sb3_hyperparameters):
    both = sb3_hyperparameters(make_config("a2c", {"normalize_observations": True, "normalize_rewards": True}))
    assert both["normalize"] == {"norm_obs": True, "norm_reward": True}
    rewards_only = sb3_hyperparameters(make_config("ppo", {"normalize_rewards": True}))
    assert rewards_only["normalize"] == {"norm_obs": False, "norm_reward": True}
    assert "normalize" not in sb3_hyperparameters(load_config(ROOT / "configs" / "a2c_long.toml"))


def test_the_continuous_policys_starting_log_std_translates(sb3_hyperparameters):
    config = load_config(ROOT / "configs" / "ppo_continuous_solve.toml")
    assert "log_std_init" not in sb3_hyperparameters(config)["policy_kwargs"]  # 0: SB3's default
    lowered = make_config("a2c", {"env_id": "LunarLanderContinuous-v3", "log_std_init": -2.0})
    assert sb3_hyperparameters(lowered)["policy_kwargs"] == {"net_arch": [64, 64], "log_std_init": -2.0}


@pytest.mark.parametrize("values,named", [({"reward_scale": 0.01}, "reward_scale"), ({"rms_decay": 0.9}, "rms_decay")])
def test_settings_sb3_lacks_are_refused(sb3_hyperparameters, values, named):
    with pytest.raises(ConfigError, match=named):
        sb3_hyperparameters(make_config("a2c", values))
