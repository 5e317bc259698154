"""Config defaults, TOML files and validation errors."""

import dataclasses
import math
from pathlib import Path

import pytest

from jaxrl_lander.config.variants import parse_settings
from jaxrl_lander.config import A2CConfig, ConfigError, PPOConfig, config_to_toml, load_config, make_config


def load_with_settings(algo, path=None, options=None, settings=()):
    """The command line's order: the file, then the --set items, then --seed and --steps."""
    return load_config(path, algo, {**parse_settings(algo, list(settings)), **(options or {})})

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.toml") if not p.name.startswith("tune_"))  # tune_*: spaces


@pytest.mark.parametrize("algo,cls", [("ppo", PPOConfig), ("a2c", A2CConfig)])
def test_shipped_toml_equals_defaults(algo, cls):
    assert load_config(CONFIGS / f"{algo}.toml") == load_config(CONFIGS / f"{algo}.toml", algo) == cls()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    import tomllib

    algo = tomllib.loads(path.read_text())["algo"]
    config = load_config(path)
    assert config.algo == algo and config.total_timesteps % config.checkpoint_interval == 0


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_config_written_as_toml_reads_back_equal(path, tmp_path):
    import tomllib

    algo = tomllib.loads(path.read_text())["algo"]
    config = load_with_settings(algo, path, {"seed": 7}, ["gamma=0.97", "env_id=LunarLander-v3"])
    written = tmp_path / "written.toml"
    written.write_text(config_to_toml(config, omit=("seed",)))
    assert "seed" not in tomllib.loads(written.read_text())
    assert load_config(written, algo, {"seed": 7}) == config


def test_seed_hyperparameters():
    ppo, a2c = PPOConfig(), A2CConfig()
    assert (ppo.learning_rate, ppo.rollout_size, ppo.batch_size, ppo.n_epochs) == (3e-4, 2048, 64, 10)
    assert (ppo.gamma, ppo.gae_lambda, ppo.clip_range, ppo.ent_coef) == (0.99, 0.95, 0.2, 0.01)
    assert (ppo.vf_coef, ppo.max_grad_norm, ppo.adam_eps, ppo.num_minibatches) == (0.5, 0.5, 1e-5, 32)
    assert (a2c.learning_rate, a2c.n_steps, a2c.gamma, a2c.gae_lambda, a2c.normalize_advantage) == (
        7e-4, 5, 0.99, 1.0, True)
    assert (a2c.optimizer, a2c.rms_decay, a2c.rms_eps, a2c.ent_coef, a2c.vf_coef) == ("rmsprop", 0.99, 1e-5, 0.0, 0.5)
    assert ppo.total_timesteps == a2c.total_timesteps == 50_000 and ppo.checkpoint_interval == 1000


def test_overrides_and_int_to_float():
    config = make_config("ppo", {"learning_rate": 1, "total_timesteps": 4096})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert dataclasses.replace(config).total_timesteps == 4096


def test_set_items_override_the_file_and_the_command_line_options_override_them(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("ent_coef = 1e-5\nnum_envs = 4\n")
    settings = ["ent_coef=1e-3", "optimizer=adam", 'env_id="LunarLander-v3"', "anneal_lr=true", "max_grad_norm=1"]
    config = load_with_settings("a2c", path, {"seed": 3}, settings)
    assert (config.ent_coef, config.num_envs, config.optimizer, config.anneal_lr) == (1e-3, 4, "adam", True)
    assert config.max_grad_norm == 1.0 and isinstance(config.max_grad_norm, float) and config.seed == 3
    assert load_with_settings("a2c", path, settings=[]) == load_config(path, "a2c")


@pytest.mark.parametrize(
    "item,message",
    [
        ("ent_coef", "--set expects KEY=VALUE, got 'ent_coef'"),
        ("=1", "--set expects KEY=VALUE, got '=1'"),
        ("lr=1", "unknown config key 'lr' in --set for algorithm 'a2c'"),
        ("clip_range=0.1", "unknown config key 'clip_range' in --set for algorithm 'a2c'"),
        ("ent_coef=lots", "config key 'ent_coef' in --set must be float, got str 'lots'"),
        ("num_envs=2.5", "config key 'num_envs' in --set must be int"),
        ("seed=3", "--set seed: use --seed instead"),
        ("total_timesteps=10", "--set total_timesteps: use --steps instead"),
        ("gamma=2", "gamma must lie in [0, 1]"),
    ],
)
def test_bad_set_items_give_one_named_error(item, message):
    with pytest.raises(ConfigError) as err:
        load_with_settings("a2c", settings=[item])
    assert message in str(err.value)


def test_set_refuses_a_key_given_twice():
    with pytest.raises(ConfigError, match="--set gives 'gamma' twice"):
        load_with_settings("a2c", settings=["gamma=0.9", "gamma=0.99"])


@pytest.mark.parametrize(
    "toml,message",
    [
        ("foo = 1", "unknown config key 'foo'"),
        ("clip_range = 0.1", None),  # valid for ppo, not for a2c: tested below
        ("total_timesteps = 'many'", "must be int"),
        ("normalize_advantage = 1", "must be bool"),
        ("gamma = 1.5", "gamma must lie in [0, 1]"),
        ("checkpoint_interval = 0", "checkpoint_interval must be a positive integer"),
        ("batch_size = 100", "batch_size 100 must divide"),
        ("normalize_rewards = true\nreward_scale = 0.1", "normalize_rewards and reward_scale 0.1 both rescale"),
        ('algo = "a2c"', "config for 'a2c', not for 'ppo'"),
        ("total_timesteps = [", "is not valid TOML"),
        ('env_backend = "brax"', "env_backend must be one of gymnasium, envpool, got 'brax'"),
        ('env_backend = "envpool"\nnormalize_rewards = true', "normalize_observations and normalize_rewards need"),
    ],
)
def test_bad_files_give_one_named_error(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    if message is None:
        assert load_config(path, "ppo").clip_range == 0.1
        with pytest.raises(ConfigError, match="unknown config key 'clip_range'"):
            load_config(path, "a2c")
        return
    with pytest.raises(ConfigError) as err:
        load_config(path, "ppo")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a2c_optimizer_must_be_known():
    assert make_config("a2c", {"optimizer": "adam"}).optimizer == "adam"
    with pytest.raises(ConfigError, match="optimizer must be one of rmsprop, adam, got 'sgd'"):
        make_config("a2c", {"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'"):
        make_config("ppo", {"optimizer": "adam"})


@pytest.mark.parametrize("values", [
    {"eval_interval": 0},
    {"eval_interval": 1500, "checkpoint_interval": 1000},
    {"eval_interval": 2000, "checkpoint_interval": 1000, "keep_checkpoints": 3},
])
def test_select_best_checkpoint_needs_a_checkpoint_at_every_evaluation(values):
    with pytest.raises(ConfigError, match="^select_best_checkpoint needs a checkpoint at every evaluation"):
        make_config("a2c", {"select_best_checkpoint": True, **values})
    make_config("a2c", {"select_best_checkpoint": True, "eval_interval": 2000, "checkpoint_interval": 1000})


def test_missing_file_and_unknown_algo():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.toml", "ppo")
    with pytest.raises(ConfigError, match="unknown algorithm 'dqn'"):
        make_config("dqn")


def test_readme_config_table_is_the_field_docstrings():
    """The README's table is written from the docstrings: regenerate it with
    python -c 'from jaxrl_lander.config.docs import markdown_table; print(markdown_table(), end="")'"""
    from jaxrl_lander.config.docs import field_docs, markdown_table

    readme = (CONFIGS.parent / "README.md").read_text()
    fields = {f.name for cls in (PPOConfig, A2CConfig) for f in dataclasses.fields(cls)}
    assert sorted(fields) == sorted(field_docs())  # every field has its docstring
    assert markdown_table() in readme


@pytest.mark.parametrize("values", [
    {"selection_candidates": 3},  # several candidates need further episodes to choose between them
    {"selection_episodes": 5},  # further episodes need several candidates
    {"selection_candidates": 3, "selection_episodes": 5, "select_best_checkpoint": False},
])
def test_selection_candidates_and_episodes_go_together_with_select_best_checkpoint(values):
    base = {"select_best_checkpoint": True, "eval_interval": 2000, "checkpoint_interval": 1000}
    with pytest.raises(ConfigError, match="^selection_candidates > 1 needs select_best_checkpoint and selection_ep"):
        make_config("a2c", {**base, **values})
    with pytest.raises(ConfigError, match="^selection_candidates must be >= 1 and selection_episodes >= 0, got 0"):
        make_config("a2c", {**base, "selection_candidates": 0})
    assert make_config("a2c", {**base, "selection_candidates": 3, "selection_episodes": 5}).selection_episodes == 5


@pytest.mark.parametrize("make,message", [
    (lambda: PPOConfig(batch_size=7), "batch_size 7 must divide the rollout size"),
    (lambda: PPOConfig(gamma=3.0), "gamma must lie in [0, 1], got 3.0"),
    (lambda: A2CConfig(learning_rate="fast"), "config key 'learning_rate' must be float, got str 'fast'"),
    (lambda: A2CConfig(normalize_rewards=1), "config key 'normalize_rewards' must be bool"),
    (lambda: PPOConfig(algo="a2c"), "algo 'a2c' does not name PPOConfig's algorithm"),
    (lambda: dataclasses.replace(A2CConfig(), rms_decay=1.0), "rms_decay must lie in [0, 1)"),
    # Non-finite values used to pass and crash the run at its first JSON write.
    (lambda: PPOConfig(clip_range=math.inf), "clip_range must be a finite number, got inf"),
    (lambda: PPOConfig(learning_rate=math.inf), "learning_rate must be a finite number, got inf"),
    (lambda: PPOConfig(adam_eps=math.inf), "adam_eps must be a finite number, got inf"),
    (lambda: PPOConfig(solve_threshold=math.nan), "solve_threshold must be a finite number, got nan"),
    (lambda: A2CConfig(solve_threshold=-math.inf), "solve_threshold must be a finite number, got -inf"),
    (lambda: A2CConfig(rms_eps=math.inf), "rms_eps must be a finite number, got inf"),
    (lambda: PPOConfig(clip_range=1.5), "clip_range must lie in (0, 1], got 1.5"),
    (lambda: A2CConfig(learning_rate=3.0), "learning_rate must lie in (0, 1], got 3.0"),
    # Settings that learn nothing used to run and report "completed".
    (lambda: PPOConfig(total_timesteps=2000), "total_timesteps 2000 is less than one rollout (num_envs x n_steps"),
    (lambda: A2CConfig(total_timesteps=39), "total_timesteps 39 is less than one rollout"),
    (lambda: PPOConfig(max_grad_norm=0.0), "max_grad_norm must be > 0"),
])
def test_no_invalid_config_object_can_exist(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)  # what a Python user catches


def test_numpy_scalars_are_taken_as_python_numbers():
    import json

    import numpy as np

    config = PPOConfig(n_steps=np.int64(128), gamma=np.float32(0.5), anneal_lr=np.bool_(True), seed=np.uint32(3))
    assert (config.n_steps, config.gamma, config.anneal_lr, config.seed) == (128, 0.5, True, 3)
    assert type(config.n_steps) is int and type(config.gamma) is float and type(config.anneal_lr) is bool
    json.dumps(config.to_dict())  # a results JSON can hold it
    with pytest.raises(ConfigError, match="config key 'n_steps' must be int, got float64"):
        PPOConfig(n_steps=np.float64(128))
    with pytest.raises(ConfigError, match="config key 'anneal_lr' must be bool, got int64"):
        PPOConfig(anneal_lr=np.int64(1))


def test_load_config_takes_the_algorithm_from_the_file(tmp_path):
    config = load_config(CONFIGS / "ppo_solve.toml", overrides={"seed": 3})
    assert isinstance(config, PPOConfig) and config.gamma == 0.999 and config.seed == 3
    with pytest.raises(ConfigError, match="config for 'ppo', not for 'a2c'"):
        load_config(CONFIGS / "ppo_solve.toml", "a2c")
    (tmp_path / "bare.toml").write_text("gamma = 0.9\n")
    with pytest.raises(ConfigError, match="names no algorithm"):
        load_config(tmp_path / "bare.toml")
    assert load_config(tmp_path / "bare.toml", "a2c") == A2CConfig(gamma=0.9)


def test_differences_name_both_values_and_take_a_key_added_since_as_its_default():
    config = make_config("ppo", {"env_backend": "envpool"})
    before_the_key = {k: v for k, v in make_config("ppo").to_dict().items() if k != "env_backend"}
    assert make_config("ppo").differences(before_the_key) == []  # a checkpoint written before env_backend existed
    assert config.differences(before_the_key) == ["env_backend ('gymnasium' there, 'envpool' here)"]
    assert config.differences({**config.to_dict(), "gamma": 0.9}, ignore={"gamma"}) == []
