"""Short real training runs (PPO and A2C on LunarLander-v3): the artifact set, schemas, resume and reproducibility."""

import json

import jax
import numpy as np
import pytest
from helpers import (SHORT_STEPS, interrupted_copy, load_json, same_params, short_config, template_state, train_run,
                     validate, without_times)

from jaxrl_lander import Policy, load_policy, train
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.model import load_model
from jaxrl_lander.config import ConfigError
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.training.evaluate import brief, evaluate, evaluate_experiment
from jaxrl_lander.storage.metrics import MetricsRecorder
from jaxrl_lander.training.runtime import Devices
from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS, TRAINING_METRICS
from jaxrl_lander.training.seeding import EVAL_SEED_OFFSET, EvalSeeds, RunKeys, eval_env_seed
from jaxrl_lander.training.selection import checkpoint_policy, ranked_evaluations, select_checkpoint

ALGOS = ["ppo", "a2c"]


@pytest.mark.parametrize("algo", ALGOS)
def test_full_artifact_set(short_runs, algo):
    _, results, paths = short_runs[algo]
    root = paths.root
    assert root.name == f"{algo}_seed42"
    for name in (f"{algo}_seed42_model", f"{algo}_seed42_metrics.json", f"{algo}_seed42_results.json"):
        assert (root / name).exists(), name
    steps = CheckpointStore(root / "checkpoints").all_steps()
    assert steps == [1000, 2000, 3000, 4000, SHORT_STEPS]  # every 1,000 env steps, and the end of the run
    assert results.artifacts["checkpoints"] == [f"checkpoints/{s}" for s in steps]
    assert results.success_criteria["SC-005"]["passed"] is True
    assert not list(root.rglob("*.tmp"))  # no temporary JSON left behind


@pytest.mark.parametrize("algo", ALGOS)
def test_outputs_match_their_schemas_and_values(short_runs, algo):
    config, results, paths = short_runs[algo]
    metrics = load_json(paths.metrics)
    validate(metrics, TRAINING_METRICS)
    on_disk = load_json(paths.results)
    validate(on_disk, EXPERIMENT_RESULTS)
    assert on_disk == results.to_dict()

    results = results.to_dict()
    assert results["total_timesteps"] == SHORT_STEPS and results["status"] == "completed"
    assert results["updates"] == SHORT_STEPS // config.rollout_size
    assert results["hyperparameters"] == config.to_dict()
    assert results["selected_checkpoint"] is None  # the last parameters are delivered
    assert results["device"] == Devices.resolve().describe()  # the devices it ran on (their choice: test_cli.py)
    assert results["steps_per_second"] > 0 and results["training_time_seconds"] > 0
    # A record each time the step count crosses a multiple of 100; the reward is the rolling mean.
    assert len(metrics["records"]) == SHORT_STEPS // 100
    assert [r["timestep"] for r in metrics["records"]] == sorted({r["timestep"] for r in metrics["records"]})
    assert metrics["statistics"]["total_episodes"] == len(metrics["episodes"]) > 0
    returns = [e["return"] for e in metrics["episodes"]]
    assert metrics["statistics"]["reward_mean"] == pytest.approx(np.mean(returns))
    assert results["final_metrics"]["total_episodes"] == len(returns)
    # Episodes of LunarLander end by crash, landing or the 1,000-step limit; a random-ish policy crashes early.
    assert all(1 <= e["length"] <= 1000 for e in metrics["episodes"])
    assert [p["timestep"] for p in results["learning_progression"]] == [1000, 2000, 3000, 4000, SHORT_STEPS]


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluation_is_deterministic_on_fresh_seeds(short_runs, algo):
    _, results, paths = short_runs[algo]
    ev = results.evaluation
    assert ev["episodes"] == 3 and len(ev["returns"]) == 3
    first = ev["seeds"][0]
    assert first >= EVAL_SEED_OFFSET and ev["seeds"] == [first, first + 1, first + 2]
    assert ev["mean"] == pytest.approx(np.mean(ev["returns"]))
    again = evaluate_experiment(paths.root, 3)
    assert again["returns"] == ev["returns"]  # the same greedy policy on the same seeds
    sampled = evaluate_experiment(paths.root, 3, sample=True)
    assert sampled["seeds"] == ev["seeds"]
    assert sampled["returns"] == evaluate_experiment(paths.root, 3, sample=True)["returns"]  # seeded key
    assert sampled["returns"] != ev["returns"]  # a barely trained policy is far from deterministic


@pytest.mark.parametrize("algo", ALGOS)
def test_final_model_and_last_checkpoint_hold_the_final_params(short_runs, algo):
    config, _, paths = short_runs[algo]
    store = CheckpointStore(paths.checkpoints)
    restored, meta = store.restore(store.latest_step(), template_state(config))
    store.close()
    assert meta["timestep"] == SHORT_STEPS and meta["config"] == config.to_dict()
    final, spec = load_model(paths.model)
    same_params(restored.params, final)
    assert spec.timestep == SHORT_STEPS
    obs = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    policy = load_policy(paths.root)
    np.testing.assert_array_equal(policy(obs), Policy(policy.network, restored.params)(obs))


@pytest.mark.slow
def test_same_seed_same_run(short_runs, tmp_path):
    """SC-004 on a short run: identical metrics (timestamps aside) and identical final parameters."""
    first = short_runs["ppo"]
    second = train_run(short_config("ppo"), tmp_path)
    assert without_times(load_json(second.paths.metrics)) == without_times(load_json(first.paths.metrics))
    same_params(load_model(second.paths.model)[0], load_model(first.paths.model)[0])
    assert second.results.evaluation["returns"] == first.results.evaluation["returns"]

    other = train_run(short_config("ppo", seed=7), tmp_path)  # and another seed gives another run
    assert load_json(other.paths.metrics)["episodes"] != load_json(first.paths.metrics)["episodes"]



def test_resume_is_deterministic_and_leaves_no_gaps(short_runs, tmp_path):
    """Two copies of the run as a kill after its checkpoint at 2,000 leaves it, one of them as the code before the
    metrics journal left it (its metrics JSON, cut back to the checkpoint, becomes the journal once): both resume to
    the same metrics and parameters, with no gap or duplicate, and go on as any other run."""
    finished = short_runs["a2c"]
    outcomes = []
    for name in ("journal", "before the journal"):
        results_dir = tmp_path / name / "results"
        interrupted_copy(finished.paths.root, results_dir / "experiments" / "a2c_seed42", keep_up_to=2000)
        if name == "before the journal":
            (results_dir / "experiments" / "a2c_seed42" / "a2c_seed42_metrics.jsonl").unlink()
        resumed = train_run(short_config("a2c"), results_dir, resume=True)
        assert resumed.results.resumed_from_timestep == 2000
        metrics = load_json(resumed.paths.metrics)
        validate(metrics, TRAINING_METRICS)
        validate(resumed.results.to_dict(), EXPERIMENT_RESULTS)
        steps = [r["timestep"] for r in metrics["records"]]
        assert steps == sorted(set(steps)) and len(steps) == SHORT_STEPS // 100  # no gap, no duplicate
        assert CheckpointStore(resumed.paths.checkpoints).all_steps() == [1000, 2000, 3000, 4000, SHORT_STEPS]
        before = load_json(finished.paths.metrics)
        kept = lambda m: [e for e in m["episodes"] if e["timestep"] <= 2000]  # noqa: E731
        assert kept(metrics) == kept(before) and metrics["records"][:20] == before["records"][:20]
        assert MetricsRecorder.load_journal(resumed.paths.metrics_journal).to_dict() == metrics  # the whole run
        assert [json.loads(line)["step"] for line in resumed.paths.metrics_journal.read_text().splitlines()[1:]] == [
            *([1000, 2000] if name == "journal" else [2000]), 3000, 4000, SHORT_STEPS]
        outcomes.append((without_times(metrics), load_model(resumed.paths.model)[0]))
    assert outcomes[0][0] == outcomes[1][0]
    same_params(outcomes[0][1], outcomes[1][1])


def test_resume_of_a_finished_run_does_nothing(short_runs):
    finished = short_runs["ppo"]
    before = finished.paths.results.stat().st_mtime_ns
    again = train(short_config("ppo"), finished.paths.root.parents[1], resume=True)
    assert again == finished.results and finished.paths.results.stat().st_mtime_ns == before


def test_keep_checkpoints_holds_across_a_resume(tmp_path):
    """Retention applies to the checkpoints of earlier processes too, and may change on resume."""
    first = train_run(short_config("a2c", total_timesteps=800, checkpoint_interval=200, keep_checkpoints=3,
                                   eval_episodes=1), tmp_path)
    assert CheckpointStore(first.paths.checkpoints).all_steps() == [400, 600, 800]
    resumed = train_run(short_config("a2c", total_timesteps=1200, checkpoint_interval=200, keep_checkpoints=2,
                                     eval_episodes=1), tmp_path, resume=True)
    results = resumed.results
    assert results.resumed_from_timestep == 800
    assert results.artifacts["checkpoints"] == ["checkpoints/1000", "checkpoints/1200"]
    assert results.success_criteria["SC-005"]["passed"] is True
    assert sorted(p.name for p in resumed.paths.checkpoints.iterdir()) == ["1000", "1200"]


def test_overwrite_replaces_the_old_experiment(tmp_path):
    config = short_config("a2c", total_timesteps=400, checkpoint_interval=200, eval_episodes=1)
    train(config, tmp_path)
    stale = tmp_path / "experiments" / "a2c_seed42" / "checkpoints" / "999999"
    stale.mkdir()
    rerun = train_run(config, tmp_path, overwrite=True)
    assert not stale.exists()
    assert CheckpointStore(rerun.paths.checkpoints).all_steps() == [200, 400]
    assert rerun.results.experiment_dir == rerun.paths.root


def test_evaluations_during_training_and_time_to_solve(tmp_path):
    config = short_config("a2c", total_timesteps=600, checkpoint_interval=600, eval_interval=200,
                          eval_interval_episodes=2, eval_episodes=2, solve_threshold=-1e9)
    results = train(config, tmp_path).to_dict()
    validate(results, EXPERIMENT_RESULTS)
    evals = results["evaluations_during_training"]
    assert [e["timestep"] for e in evals] == [200, 400, 600] and all(e["episodes"] == 2 for e in evals)
    times = [e["training_seconds"] for e in evals]
    assert times == sorted(times) and times[-1] <= results["training_time_seconds"]
    # Any return beats a threshold of -1e9: solved at the first evaluation.
    assert results["solved"] == {"threshold": -1e9, "timestep": 200, "training_seconds": times[0]}
    assert results["success_criteria"]["SC-006"]["passed"] is True


def test_select_best_checkpoint_delivers_the_best_evaluated_parameters(tmp_path):
    """The model and the final evaluation are those of the checkpoint with the best evaluation during training,
    its observation statistics included; the last parameters' evaluation is recorded beside them."""
    config = short_config("a2c", total_timesteps=1000, checkpoint_interval=200, eval_interval=400,
                          eval_interval_episodes=2, normalize_observations=True, select_best_checkpoint=True)
    _, results, paths = train_run(config, tmp_path)
    results = results.to_dict()
    validate(results, EXPERIMENT_RESULTS)
    # Evaluations at 400 and 800 only: the best is not the end (1,000), so delivering it changes the model.
    assert [e["timestep"] for e in results["evaluations_during_training"]] == [400, 800]
    best = max(results["evaluations_during_training"], key=lambda e: e["mean"])
    selected = results["selected_checkpoint"]
    assert selected["timestep"] == best["timestep"] and selected["evaluation_during_training"] == best["mean"]
    assert selected["last_parameters_evaluation"]["episodes"] == 3
    assert selected["candidates"] == [{"timestep": best["timestep"], "evaluation_during_training": best["mean"],
                                       "selection_evaluation": None}]

    store = CheckpointStore(paths.checkpoints)
    state, meta = store.restore(best["timestep"], template_state(config))
    last, _ = store.restore(1000, template_state(config))
    store.close()
    params, spec = load_model(paths.model)
    same_params(params, state.params)
    assert spec.timestep == best["timestep"]
    assert spec.observation_normalization == meta["normalizer"]["observations"]
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, params, last.params)))
    # The verdict is on episodes past the 2 each evaluation during training played, so not on those it was
    # selected by; the delivered model replays it by default, and SC-006 judges it.
    first = eval_env_seed(RunKeys.from_seed(config.seed).eval) + 2
    assert results["evaluation"]["seeds"] == [first, first + 1, first + 2] and spec.first_eval_seed == first
    assert evaluate_experiment(paths.root, 3)["returns"] == results["evaluation"]["returns"]
    assert results["success_criteria"]["SC-006"]["value"] == results["evaluation"]["mean"]


def test_resume_refuses_a_checkpoint_whose_config_differs(short_runs, tmp_path):
    """A checkpoint whose config holds another value is refused, naming the key and both values; a key it lacks
    (added since it was written) counts as that key's default."""
    finished = short_runs["a2c"]
    results_dir = tmp_path / "results"
    root = results_dir / "experiments" / "a2c_seed42"
    interrupted_copy(finished.paths.root, root, keep_up_to=4000)
    meta_path = root / "checkpoints" / "4000" / "metadata" / "metadata"
    meta = load_json(meta_path)
    before = meta_path.read_text()
    del meta["config"]["solve_threshold"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"checkpoint in solve_threshold \(200.0 there, 150.0 here\)$"):
        train(short_config("a2c", solve_threshold=150.0), results_dir, resume=True)

    meta_path.write_text(before)
    meta["config"] = load_json(meta_path)["config"] | {"gamma": 0.5}  # a real difference is refused too
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint in gamma \(0.5 there, 0.99 here\)$"):
        train(short_config("a2c"), results_dir, resume=True)
    meta_path.write_text(before)
    with pytest.raises(ConfigError, match=r"in hidden_size \(64 there, 32 here\)$"):  # not "unreadable"
        train(short_config("a2c", hidden_size=32), results_dir, resume=True)
    # and the checkpoint as saved resumes
    results = train(short_config("a2c"), results_dir, resume=True)
    assert results.resumed_from_timestep == 4000 and results.status == "completed"


@pytest.mark.needs("PIL")  # Pillow writes the GIF (the plot extra)
def test_render_one_episode_to_gif(short_runs, tmp_path):
    from PIL import Image

    from jaxrl_lander.training.evaluate import render_episode_gif

    _, results, paths = short_runs["ppo"]
    first_seed = results.evaluation["seeds"][0]
    gif, episode_return = render_episode_gif(paths.root, out=tmp_path / "x.gif", seed=first_seed)
    # The rendered episode is the first evaluation episode: same greedy policy, same seed.
    assert episode_return == pytest.approx(results.evaluation["returns"][0])
    with Image.open(gif) as im:
        assert im.n_frames > 2 and im.size == (300, 200)


def test_normalised_run_keeps_its_statistics_in_checkpoints_and_model(tmp_path):
    """Observation and reward normalisation: the statistics grow with every training observation, go into each
    checkpoint (a resume continues them) and into the model, which then plays as the final evaluation did."""
    config = short_config("a2c", normalize_observations=True, normalize_rewards=True)
    full = train_run(config, tmp_path / "full")
    store = CheckpointStore(full.paths.checkpoints)
    _, meta = store.restore(SHORT_STEPS, template_state(config))
    _, meta_2000 = store.restore(2000, template_state(config))
    store.close()
    saved = meta["normalizer"]
    # The reset's observations and one per env step; one discounted return per env step.
    assert saved["observations"]["count"] == pytest.approx(config.num_envs + SHORT_STEPS, abs=1e-3)
    assert saved["returns"]["count"] == pytest.approx(SHORT_STEPS, abs=1e-3)
    assert max(saved["observations"]["var"]) != 1.0 and saved["returns"]["var"] != 1.0

    _, spec = load_model(full.paths.model)
    assert spec.observation_normalization == saved["observations"]
    assert evaluate_experiment(full.paths.root, 3)["returns"] == full.results.evaluation["returns"]

    results_dir = tmp_path / "resumed"
    interrupted_copy(full.paths.root, results_dir / "experiments" / "a2c_seed42", keep_up_to=2000)
    resumed = train_run(config, results_dir, resume=True)
    store = CheckpointStore(resumed.paths.checkpoints)
    _, meta_resumed = store.restore(SHORT_STEPS, template_state(config))
    store.close()
    # Continued from the checkpoint's statistics: its count, plus the new reset and the remaining steps.
    expected = meta_2000["normalizer"]["observations"]["count"] + config.num_envs + SHORT_STEPS - 2000
    assert meta_resumed["normalizer"]["observations"]["count"] == pytest.approx(expected, abs=1e-3)


def test_selection_candidates_play_further_episodes_and_the_best_there_is_delivered(tmp_path):
    """With two candidates, the checkpoints of the two best evaluations during training play the same further
    episodes, the better there is delivered, and the verdict is on episodes past both selections'."""
    config = short_config("a2c", total_timesteps=1200, checkpoint_interval=200, eval_interval=200,
                          eval_interval_episodes=1, normalize_observations=True, select_best_checkpoint=True,
                          selection_candidates=2, selection_episodes=2)
    _, results, paths = train_run(config, tmp_path)
    results = results.to_dict()
    validate(results, EXPERIMENT_RESULTS)
    ranked = sorted(results["evaluations_during_training"], key=lambda e: -e["mean"])[:2]
    selected = results["selected_checkpoint"]
    candidates = selected["candidates"]
    assert [c["timestep"] for c in candidates] == [e["timestep"] for e in ranked]
    assert [c["evaluation_during_training"] for c in candidates] == [e["mean"] for e in ranked]
    assert all(c["selection_evaluation"]["episodes"] == 2 for c in candidates)
    chosen = max(candidates, key=lambda c: c["selection_evaluation"]["mean"])  # whichever order that gives: the
    # case where the further episodes overturn the evaluations during training is constructed below
    assert selected["timestep"] == chosen["timestep"]
    assert selected["evaluation_during_training"] == chosen["evaluation_during_training"]

    store = CheckpointStore(paths.checkpoints)
    state, meta = store.restore(chosen["timestep"], template_state(config))
    store.close()
    params, spec = load_model(paths.model)
    same_params(params, state.params)
    assert spec.observation_normalization == meta["normalizer"]["observations"]
    # The candidates played seeds past the evaluations during training; the verdict plays seeds past both.
    first = eval_env_seed(RunKeys.from_seed(config.seed).eval) + 1 + 2
    assert results["evaluation"]["seeds"] == [first, first + 1, first + 2] and spec.first_eval_seed == first
    assert evaluate_experiment(paths.root, 3)["returns"] == results["evaluation"]["returns"]


def test_a_resume_may_change_how_candidates_are_chosen_but_not_whether(tmp_path):
    """The selection keys act once training is over, on checkpoints every evaluation kept; select_best_checkpoint
    itself may not change, since a run without it may have dropped the checkpoints it would need."""
    selecting = dict(checkpoint_interval=200, eval_interval=200, eval_interval_episodes=1)
    first = train(short_config("a2c", **selecting, select_best_checkpoint=True, total_timesteps=400), tmp_path)
    assert first.status == "completed"
    resumed = train(short_config("a2c", **selecting, select_best_checkpoint=True, total_timesteps=1200,
                                 selection_candidates=3, selection_episodes=5), tmp_path, resume=True)
    assert resumed.resumed_from_timestep == 400 and len(resumed.selected_checkpoint["candidates"]) == 3
    with pytest.raises(ConfigError, match=r"checkpoint in select_best_checkpoint \(True there, False here\)$"):
        train(short_config("a2c", **selecting, total_timesteps=1400), tmp_path, resume=True)


def test_the_candidates_further_episodes_overturn_their_evaluations_during_training(short_runs):
    """Constructed evaluations during training rank two real checkpoints against what they play on the further
    episodes: the one that plays better there is delivered, though ranked second; it is not the last step, so its
    parameters replace the last ones and the verdict is still to play."""
    _, _, paths = short_runs["a2c"]
    config = short_config("a2c", eval_interval=1000, eval_interval_episodes=1, select_best_checkpoint=True,
                          selection_candidates=2, selection_episodes=2)
    store, template, network = CheckpointStore(paths.checkpoints), template_state(config), load_policy(paths.root).network
    seeds = EvalSeeds.of(config)
    replay = {step: evaluate(checkpoint_policy(store, step, template, network), EnvChoice.of(config), 2,
                             seeds.selection) for step in (1000, 2000)}
    worse, better = sorted(replay, key=lambda step: replay[step]["mean"])
    assert replay[worse]["mean"] < replay[better]["mean"]  # two policies' returns, not a tie
    evaluations = [{"timestep": worse, "mean": 10.0}, {"timestep": better, "mean": 5.0},
                   {"timestep": 3000, "mean": -50.0}, {"timestep": 4000, "mean": -60.0}]
    last = checkpoint_policy(store, SHORT_STEPS, template, network)
    delivery = select_checkpoint(config, store, template, last, SHORT_STEPS, evaluations, "a2c_seed42")
    assert delivery.step == better and delivery.evaluation is None
    assert delivery.selected["candidates"] == [
        {"timestep": worse, "evaluation_during_training": 10.0, "selection_evaluation": brief(replay[worse])},
        {"timestep": better, "evaluation_during_training": 5.0, "selection_evaluation": brief(replay[better])}]
    assert delivery.selected["timestep"] == better and delivery.selected["evaluation_during_training"] == 5.0
    same_params(delivery.policy.params, store.restore(better, template)[0].params)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, delivery.policy.params, last.params)))
    final = evaluate(last, EnvChoice.of(config), config.eval_episodes, seeds.final)
    assert delivery.selected["last_parameters_evaluation"] == brief(final)
    store.close()


def test_a_choice_of_the_last_step_reuses_the_last_parameters_evaluation(short_runs):
    """Constructed evaluations during training whose best is the last step: its checkpoint holds the last
    parameters, so their evaluation is the verdict, played once."""
    _, _, paths = short_runs["a2c"]
    config = short_config("a2c", eval_interval=1000, eval_interval_episodes=1, select_best_checkpoint=True)
    store, template, network = CheckpointStore(paths.checkpoints), template_state(config), load_policy(paths.root).network
    last = checkpoint_policy(store, SHORT_STEPS, template, network)
    evaluations = [{"timestep": 1000, "mean": -5.0}, {"timestep": SHORT_STEPS, "mean": 5.0}]
    delivery = select_checkpoint(config, store, template, last, SHORT_STEPS, evaluations, "a2c_seed42")
    store.close()
    assert delivery.step == SHORT_STEPS and delivery.selected["candidates"] == [
        {"timestep": SHORT_STEPS, "evaluation_during_training": 5.0, "selection_evaluation": None}]
    final = evaluate(last, EnvChoice.of(config), config.eval_episodes, EvalSeeds.of(config).final)
    assert delivery.evaluation["returns"] == final["returns"] and delivery.evaluation["seconds"] > 0
    assert delivery.selected["last_parameters_evaluation"] == brief(final)


def test_the_earlier_evaluation_ranks_first_on_a_tie():
    evaluations = [{"timestep": 400, "mean": 1.0}, {"timestep": 800, "mean": 3.0}, {"timestep": 1200, "mean": 1.0}]
    assert [e["timestep"] for e in ranked_evaluations(evaluations, 3)] == [800, 400, 1200]
    assert ranked_evaluations(evaluations, 2) == [evaluations[1], evaluations[0]]
