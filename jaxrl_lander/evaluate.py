"""Evaluation episodes (deterministic, or sampled with a seeded key), and load_policy: the public way to use a
trained agent."""

import functools
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import numpy as np

from jaxrl_lander.checkpoint import load_model
from jaxrl_lander.envs import finished_episodes, make_vector_env
from jaxrl_lander.normalization import observation_function
from jaxrl_lander.policy import ActorCritic, greedy_action, sample_action
from jaxrl_lander.recording import replaced_atomically

MAX_PARALLEL_EPISODES = 64


def run_episodes(act: Callable[[np.ndarray], np.ndarray], env_id: str, num_episodes: int, seed: int) -> list[dict]:
    """Play `num_episodes` episodes with `act`; episode j is seeded `seed + j`. Returns [{seed, return, length}]."""
    results = []
    for start in range(0, num_episodes, MAX_PARALLEL_EPISODES):
        n = min(MAX_PARALLEL_EPISODES, num_episodes - start)
        envs = make_vector_env(env_id, n)
        try:
            obs, _ = envs.reset(seed=seed + start)
            first = [None] * n
            while any(f is None for f in first):
                obs, _, _, _, info = envs.step(act(obs))
                for i, ret, length in finished_episodes(info):
                    if first[i] is None:
                        first[i] = {"seed": seed + start + i, "return": ret, "length": length}
        finally:
            envs.close()
        results.extend(first)
    return results


def summarize(episodes: list[dict]) -> dict:
    returns = np.array([e["return"] for e in episodes], dtype=np.float64)
    return {
        "episodes": len(episodes),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "returns": [float(r) for r in returns],
        "seeds": [e["seed"] for e in episodes],
    }


def brief(summary: dict) -> dict:
    """A summary without its episodes' returns and seeds."""
    return {k: summary[k] for k in ("episodes", "mean", "std", "min", "max")}


@functools.cache
def _compiled(action_fn: Callable, policy: ActorCritic):
    # One jitted function per action rule and network, so repeated evaluations during training never retrace.
    return jax.jit(partial(action_fn, policy))


ObsFn = Callable[[np.ndarray], np.ndarray] | None  # what the policy's inputs go through first (normalisation)


def _inputs(obs: np.ndarray, standardize: ObsFn) -> np.ndarray:
    obs = np.asarray(obs, dtype=np.float32)
    return obs if standardize is None else standardize(obs)


def greedy_policy(policy: ActorCritic, params, standardize: ObsFn = None) -> Callable[[np.ndarray], np.ndarray]:
    """Host callable: observations (N, obs_dim) -> argmax actions (N,) as numpy int32; `standardize`, if given,
    maps raw observations to the network's inputs."""
    act = _compiled(greedy_action, policy)
    return lambda obs: np.asarray(act(params, _inputs(obs, standardize)))


def sampling_policy(policy: ActorCritic, params, seed: int, standardize: ObsFn = None
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """Host callable: observations (N, obs_dim) -> actions (N,) drawn from the policy, from jax.random.key(seed);
    the same seed and observations give the same actions."""
    act, key = _compiled(sample_action, policy), jax.random.key(seed)

    def sample(obs: np.ndarray) -> np.ndarray:
        nonlocal key
        actions, key = act(params, _inputs(obs, standardize), key)
        return np.asarray(actions)

    return sample


def model_path(path: str | Path) -> Path:
    """Accept either a model directory or an experiment directory holding exactly one *_model."""
    path = Path(path)
    if path.name.endswith("_model"):
        return path
    candidates = sorted(path.glob("*_model"))
    if len(candidates) != 1:
        raise FileNotFoundError(f"no trained model found in {path}")
    return candidates[0]


def _load_agent(path: str | Path, seed: int | None, sample: bool = False
                ) -> tuple[Callable[[np.ndarray], np.ndarray], dict, int, Path]:
    """(act, model spec, first evaluation seed, model dir); the seed defaults to the run's evaluation seeds.

    `act` is the greedy policy, or with `sample` the policy's own distribution, its key seeded by the same seed.
    """
    from jaxrl_lander.envs import eval_env_seed
    from jaxrl_lander.train import RunKeys

    model = model_path(path)
    params, spec = load_model(model)
    if seed is None:  # the final evaluation's first seed (absent from older models: the evaluation seeds)
        seed = spec.get("first_eval_seed", eval_env_seed(RunKeys.from_seed(spec["seed"]).eval))
    policy = ActorCritic(num_actions=spec["num_actions"], hidden_size=spec["hidden_size"])
    standardize = observation_function(spec.get("observation_normalization"))  # absent from older models
    act = sampling_policy(policy, params, seed, standardize) if sample else greedy_policy(policy, params, standardize)
    return act, spec, seed, model


def load_policy(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Load a trained agent: returns a callable mapping obs (N, 8) float32 to deterministic actions (N,) int."""
    return _load_agent(path, seed=0)[0]  # any seed: only the policy is used


def evaluate_experiment(path: str | Path, num_episodes: int, seed: int | None = None, sample: bool = False) -> dict:
    """Evaluate an experiment's final model; by default on the seeds its training run evaluated on, and
    deterministically (argmax); with `sample`, actions are drawn from the policy instead."""
    act, spec, seed, _ = _load_agent(path, seed, sample)
    return summarize(run_episodes(act, spec["env_id"], num_episodes, seed))


def render_episode_gif(path: str | Path, out: Path | None = None, seed: int | None = None, sample: bool = False,
                       max_steps: int = 1000, frame_every: int = 2, scale: int = 2) -> tuple[Path, float]:
    """Play one episode (greedy, or sampled as evaluate_experiment) with rgb_array rendering and save it as an
    animated GIF (needs Pillow, which the `plot` extra brings). Every `frame_every`-th frame is kept,
    downscaled by `scale`."""
    import gymnasium as gym
    from PIL import Image

    act, spec, seed, model = _load_agent(path, seed, sample)
    env = gym.make(spec["env_id"], render_mode="rgb_array", max_episode_steps=max_steps)
    frames, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed)
        for t in range(max_steps + 1):
            if t % frame_every == 0:
                frames.append(Image.fromarray(env.render()))
            obs, reward, terminated, truncated, _ = env.step(int(act(np.asarray(obs)[None])[0]))
            total += float(reward)
            if terminated or truncated:
                frames.append(Image.fromarray(env.render()))
                break
    finally:
        env.close()
    frames = [f.reduce(scale) for f in frames] if scale > 1 else frames
    out = out or model.parent / f"{model.parent.name}_episode.gif"
    with replaced_atomically(out) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=1000 * frame_every // 50, loop=0)
    return out, total
