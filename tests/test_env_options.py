"""LunarLander's options (gravity, wind): checked up front, played alike by the training envs, every evaluation and
the saved model, and part of the experiment's name, so that two envs never share an experiment."""

import contextlib
import dataclasses
import itertools
import json
import shutil

import probe_envs  # noqa: F401  (registers the probe envs)
import pytest
from gymnasium.envs.box2d.lunar_lander import LunarLander
from helpers import short_config, train_run, validate

from jaxrl_lander.config import ENV_OPTIONS, ConfigError, make_config
from jaxrl_lander.config.errors import UnreadableModel
from jaxrl_lander.storage.files import MAX_NAME, NAME_PATTERN, ExperimentPaths, env_name
from jaxrl_lander.storage.model import load_model
from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS, TRAINING_METRICS
from jaxrl_lander.studies.sweep import _summarized_seeds
from jaxrl_lander.training.evaluate import evaluate_experiment, load_agent

WINDY = {"gravity": -9.5, "enable_wind": True, "wind_power": 7.5, "turbulence_power": 0.5}
DEFAULTS = {"gravity": -10.0, "enable_wind": False, "wind_power": 15.0, "turbulence_power": 1.5}


@pytest.mark.parametrize("values,message", [
    ({"gravity": -12.0}, "gravity must lie in (-12, 0), bounds excluded"),
    ({"gravity": 0.0}, "gravity must lie in (-12, 0)"),
    ({"gravity": 3}, "gravity must lie in (-12, 0)"),
    ({"enable_wind": True, "wind_power": 20.5}, "wind_power must lie in [0, 20]"),
    ({"enable_wind": True, "wind_power": -1.0}, "wind_power must lie in [0, 20]"),
    ({"enable_wind": True, "turbulence_power": 2.01}, "turbulence_power must lie in [0, 2]"),
    ({"enable_wind": True, "turbulence_power": -0.5}, "turbulence_power must lie in [0, 2]"),
    ({"gravity": float("nan")}, "gravity must be a finite number"),
    ({"enable_wind": "yes"}, "config key 'enable_wind' in overrides must be bool"),
    # Wind strengths without wind change nothing: two configs would describe one env.
    ({"wind_power": 10.0}, "wind_power needs enable_wind = true"),
    ({"turbulence_power": 1.0}, "turbulence_power needs enable_wind = true"),
    ({"wind_power": 10.0, "turbulence_power": 1.0}, "wind_power and turbulence_power need enable_wind = true"),
    # envpool's LunarLander has no such options: refused before anything loads.
    ({"env_backend": "envpool", "enable_wind": True}, "env_backend 'envpool' has no enable_wind"),
    ({"env_backend": "envpool", "gravity": -9.0}, "env_backend 'envpool' has no gravity"),
    ({"env_id": "JaxrlLanderTest/Countdown-v0", "gravity": -9.0}, "only LunarLander-v3 and LunarLanderContinuous-v3"),
])
def test_env_options_out_of_range_or_without_effect_are_one_config_error(values, message):
    with pytest.raises(ConfigError) as caught:
        make_config("ppo", values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_env_options_in_range_are_taken_and_only_those_off_their_default_are_gymnasiums_kwargs():
    assert make_config("a2c", {}).env_options() == {} and make_config("ppo", DEFAULTS).env_options() == {}
    assert make_config("ppo", {"wind_power": 15, "turbulence_power": 1.5}).env_options() == {}  # the defaults
    edges = {"gravity": -11.999, "enable_wind": True, "wind_power": 0.0, "turbulence_power": 2.0}
    assert make_config("ppo", edges).env_options() == edges
    assert make_config("ppo", {"enable_wind": True}).env_options() == {"enable_wind": True}
    assert make_config("ppo", {"gravity": -1, "env_backend": "gymnasium"}).env_options() == {"gravity": -1.0}
    assert set(DEFAULTS) == set(ENV_OPTIONS)
    assert all(make_config("ppo", {}).to_dict()[key] == value for key, value in DEFAULTS.items())


def _name(algo="ppo", seed=42, **keys) -> str:
    return ExperimentPaths.of("results", make_config(algo, {"seed": seed, **keys})).name


def test_the_default_env_keeps_its_name_and_every_other_env_has_its_own():
    default = ExperimentPaths.of("results", make_config("ppo", {"seed": 42}))
    assert default.root == ExperimentPaths.of("results", make_config("ppo", DEFAULTS | {"seed": 42})).root
    assert str(default.root) == "results/experiments/ppo_seed42" and _name("a2c", 7) == "a2c_seed7"
    assert _name(env_id="LunarLanderContinuous-v3") == "ppo_continuous_seed42"
    assert _name(enable_wind=True) == "ppo_wind15.0-turb1.5_seed42"
    assert _name(enable_wind=True, wind_power=20, turbulence_power=0) == "ppo_wind20.0-turb0.0_seed42"
    assert _name(gravity=-9.5) == "ppo_gravity-9.5_seed42"
    assert _name(env_id="LunarLanderContinuous-v3", gravity=-9.5, enable_wind=True, seed=3) == \
        "ppo_continuous_gravity-9.5_wind15.0-turb1.5_seed3"
    assert _name(env_id="JaxrlLanderTest/Countdown-v0") == "ppo_env=JaxrlLanderTest+Countdown-v0_seed42"
    # Nothing but the algorithm, the seed and the env names an experiment.
    assert _name(gamma=0.9, num_envs=4, env_backend="envpool") == "ppo_seed42"


def test_distinct_envs_get_distinct_plain_names():
    values = {"env_id": ["LunarLander-v3", "LunarLanderContinuous-v3"], "gravity": [-10.0, -9.5, -9.0, -1e-05, -11.9],
              "enable_wind": [False, True], "wind_power": [15.0, 0.0, 15.000000000000002],
              "turbulence_power": [1.5, 0.0, 1.0]}
    configs = []
    for combination in itertools.product(*values.values()):
        keys = dict(zip(values, combination))
        try:
            configs.append(make_config("ppo", keys))
        except ConfigError:  # wind strengths without wind
            assert not keys["enable_wind"]
    envs = {(c.env_id, tuple(sorted(c.env_options().items()))) for c in configs}
    names = {ExperimentPaths.of("r", c).name for c in configs}
    assert len(names) == len(envs) == 2 * 5 * (1 + 3 * 3)  # one name per env, never one for two
    assert all(NAME_PATTERN.fullmatch(n) and len(n) <= MAX_NAME for n in names)
    # -0.0 and 0.0 are one env: one name.
    assert _name(enable_wind=True, wind_power=-0.0) == _name(enable_wind=True, wind_power=0.0)


def test_a_name_too_long_to_read_is_a_digest_still_one_per_env():
    precise = {"env_id": "LunarLanderContinuous-v3", "gravity": -1.2345678901234567e-05, "enable_wind": True,
               "wind_power": 1.2345678901234567e-05, "turbulence_power": 1.2345678901234567e-05}
    name = _name(seed=2**32 - 1, **precise)
    assert name.startswith("ppo_env-") and name.endswith("_seed4294967295") and len(name) <= MAX_NAME
    assert _name(seed=0, **precise) == name.replace("_seed4294967295", "_seed0")  # the seed never changes the rest
    assert _name(**precise | {"wind_power": 2.2345678901234567e-05}) != _name(**precise)
    lunar = env_name(make_config("ppo", precise | {"env_id": "LunarLander-v3"}))
    assert lunar.startswith("_env-") and lunar != env_name(make_config("ppo", precise))


def test_a_sweep_summary_counts_the_seeds_of_its_own_env_only(tmp_path):
    windy, calm = make_config("a2c", {"enable_wind": True}), make_config("a2c", {})
    for config, seed in ((windy, 1), (windy, 2), (calm, 3)):
        paths = ExperimentPaths.of(tmp_path, dataclasses.replace(config, seed=seed))
        paths.root.mkdir(parents=True)
        paths.results.write_text(json.dumps({"status": "completed"}))
    assert _summarized_seeds(windy, [5], tmp_path) == [1, 2, 5]
    assert _summarized_seeds(calm, [], tmp_path) == [3]


@contextlib.contextmanager
def landers_made():
    """Every LunarLander env made inside the block, as gymnasium built it."""
    made, init = [], LunarLander.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    LunarLander.__init__ = recording
    try:
        yield made
    finally:
        LunarLander.__init__ = init


@pytest.fixture
def made_landers():
    with landers_made() as made:
        yield made


def _options(env) -> dict:
    return {name: getattr(env, name) for name in ENV_OPTIONS}


@pytest.fixture(scope="module")
def windy_run(tmp_path_factory):
    """A tiny PPO run on a windy, lighter LunarLander, and every env it made."""
    config = short_config("ppo", num_envs=2, n_steps=64, batch_size=64, n_epochs=1, total_timesteps=128,
                          checkpoint_interval=128, eval_episodes=2, **WINDY)
    with landers_made() as made:
        run = train_run(config, tmp_path_factory.mktemp("windy"), progress_bar=False)
    return run, made


def test_training_evaluation_and_the_saved_model_play_the_same_windy_env(windy_run, made_landers, cli, tmp_path):
    run, made = windy_run
    assert len(made) >= 2 + 2  # the two training envs, the two evaluation episodes'
    assert [_options(env) for env in made] == [WINDY] * len(made)
    assert run.paths.name == run.results.experiment_id == run.paths.root.name
    assert run.paths.name == "ppo_gravity-9.5_wind7.5-turb0.5_seed42"
    saved = json.loads(run.paths.results.read_text())
    assert {key: saved["hyperparameters"][key] for key in ENV_OPTIONS} == WINDY
    validate(saved, EXPERIMENT_RESULTS)
    validate(json.loads(run.paths.metrics.read_text()), TRAINING_METRICS)
    assert load_agent(run.paths.root)[1].env_options == WINDY  # the model records them
    evaluate_experiment(run.paths.root, 3)  # what `jaxrl_lander evaluate` and load_policy's users play
    assert [_options(env) for env in made_landers] == [WINDY] * 3
    made_landers.clear()
    proc = cli("evaluate", run.paths.root, "--episodes", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [_options(env) for env in made_landers] == [WINDY] * 2


@pytest.mark.needs("PIL")
def test_the_gif_plays_the_saved_env(windy_run, made_landers, tmp_path):
    from jaxrl_lander.training.evaluate import render_episode_gif

    run, _ = windy_run
    render_episode_gif(run.paths.root, out=tmp_path / "episode.gif", max_steps=50)
    assert [_options(env) for env in made_landers] == [WINDY]


def test_a_model_saved_without_env_options_loads_and_plays_the_default_env(windy_run, made_landers, tmp_path):
    run, _ = windy_run
    old = tmp_path / run.paths.name
    shutil.copytree(run.paths.root, old)
    spec_file = old / f"{run.paths.name}_model" / "policy" / "metadata"
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({k: v for k, v in spec.items() if k != "env_options"}))
    assert load_model(old / f"{run.paths.name}_model")[1].env_options == {}
    evaluate_experiment(old, 2)
    assert [_options(env) for env in made_landers] == [DEFAULTS] * 2


@pytest.mark.parametrize("options,message", [
    ({"gravity": 5.0}, "its spec's env_options: gravity must lie in (-12, 0)"),
    ({"wind_power": 3.0}, "wind_power needs enable_wind = true"),
    ({"num_envs": 3}, "its spec's env_options must be an object of gravity, enable_wind, wind_power,"),
    (["gravity"], "its spec's env_options must be an object of"),
])
def test_a_model_whose_env_options_were_edited_is_unreadable(windy_run, tmp_path, options, message):
    run, _ = windy_run
    model = tmp_path / "x_model"
    shutil.copytree(run.paths.model, model)
    spec_file = model / "policy" / "metadata"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "env_options": options}))
    with pytest.raises(UnreadableModel, match="x_model is unreadable") as caught:
        load_model(model)
    assert message in str(caught.value)
