"""Playing a trained agent: Policy and load_policy (the public way to use one), and evaluation episodes."""

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_lander.storage.model import ModelSpec, load_model
from jaxrl_lander.config.errors import UnreadableModel
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.envs.normalization import observation_function
from jaxrl_lander.storage.files import ExperimentPaths, model_path, replaced_atomically
from jaxrl_lander.config import ENV_IDS
from jaxrl_lander.core.policy import ActorCritic, greedy_action, sample_env_action, state_value

MAX_PARALLEL_EPISODES = 64
MAX_AGENT_EPISODES = 256  # sub-envs of one vectorised agents' evaluation batch
PROGRESS_SECONDS = 10.0  # between the progress lines of a long evaluation
log = logging.getLogger("jaxrl_lander")


@functools.cache
def _compiled(action_fn: Callable, network: ActorCritic):
    # One jitted function per rule and network, so repeated evaluations during training never retrace.
    return jax.jit(functools.partial(action_fn, network))


class Policy:
    """A trained agent: raw observations (N, obs_dim) in, actions out as the env takes them: (N,) int32 for
    discrete actions, (N, action_dim) float32 in [-1, 1] for continuous ones.

    `policy(obs)` takes the most likely action (argmax of the logits, or the Gaussian's mean clipped to the
    bounds); `policy(obs, deterministic=False, seed=0)` (or key=...) samples from the policy's distribution. A
    policy trained with observation normalisation standardises its inputs with the statistics it was saved with.
    """

    def __init__(self, network: ActorCritic, params, observation_stats: dict[str, Any] | None = None):
        self.network, self.params = network, params
        self.observation_stats = observation_stats
        self._standardize = observation_function(observation_stats)

    def _inputs(self, obs) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        return obs if self._standardize is None else self._standardize(obs)

    def __call__(self, obs, deterministic: bool = True, key: jax.Array | None = None,
                 seed: int | None = None) -> np.ndarray:
        if deterministic:
            return np.asarray(_compiled(greedy_action, self.network)(self.params, self._inputs(obs)))
        if (key is None) == (seed is None):
            raise ValueError("sampling actions needs exactly one of key= or seed=")
        key = jax.random.key(seed) if key is None else key
        actions, _ = _compiled(sample_env_action, self.network)(self.params, self._inputs(obs), key)
        return np.asarray(actions)

    def sampler(self, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function drawing actions with a key chain from jax.random.key(seed), for playing episodes; its first
        call gives what policy(obs, deterministic=False, seed=seed) gives."""
        act, key = _compiled(sample_env_action, self.network), jax.random.key(seed)

        def sample(obs) -> np.ndarray:
            nonlocal key
            actions, key = act(self.params, self._inputs(obs), key)
            return np.asarray(actions)

        return sample

    def value(self, obs) -> np.ndarray:
        """The critic's estimate V(s) of each observation, (N,)."""
        return np.asarray(_compiled(state_value, self.network)(self.params, self._inputs(obs)))


def load_agent(path: str | Path) -> tuple[Policy, ModelSpec]:
    """The policy saved in a model or experiment directory, and its spec; UnreadableModel when the parameters are
    not those of the network its spec describes (an edited spec)."""
    model = model_path(path)
    params, spec = load_model(model)
    network = ActorCritic(action_size=spec.num_actions, hidden_size=spec.hidden_size,
                          continuous=ENV_IDS[spec.env_id].continuous)
    expected = jax.eval_shape(network.init, jax.random.key(0), jax.ShapeDtypeStruct((1, spec.obs_dim), np.float32))
    shape = lambda tree: jax.tree.map(lambda x: (tuple(np.shape(x)), np.dtype(x.dtype).name), tree)  # noqa: E731
    if shape(expected) != shape(params):
        raise UnreadableModel(f"model {model} is unreadable: its parameters are not those of the network its spec"
                              f" describes (obs_dim {spec.obs_dim}, num_actions {spec.num_actions}, hidden_size"
                              f" {spec.hidden_size})")
    return Policy(network, params, spec.observation_normalization), spec


def _player(path: str | Path, seed: int | None, sample: bool):
    """(how to act, spec, first episode seed) of a saved agent, as `evaluate` plays it: from the seed of its final
    evaluation unless `seed` says otherwise; argmax, or sampled with a key from that seed."""
    policy, spec = load_agent(path)
    seed = spec.first_eval_seed if seed is None else seed
    return (policy.sampler(seed) if sample else policy), spec, seed


def saved_env(spec: ModelSpec) -> EnvChoice:
    """The env a saved model was trained and evaluated on, its options included (the default env for a model saved
    before they were recorded)."""
    return EnvChoice(spec.env_id, spec.env_options)


def load_policy(path: str | Path) -> Policy:
    """Load a trained agent from a model directory, or an experiment directory holding one."""
    return load_agent(path)[0]


def play_seeds(act: Callable[[np.ndarray], np.ndarray], env: EnvChoice, seeds: list[int]) -> list[dict]:
    """One episode per seed, env i reset with seeds[i]; [{seed, return, length}] in the order of `seeds`.

    `act` sees every env's observation at each step, so that its compiled shape never changes; an env whose
    episode has ended is not stepped again (its row repeats its last observation), so a batch costs the env
    steps of its episodes, not its longest episode's length times the batch."""
    envs = [env.make() for _ in seeds]
    try:
        obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)])
        returns, lengths, first = [0.0] * len(seeds), [0] * len(seeds), [None] * len(seeds)
        playing = list(range(len(seeds)))
        while playing:
            actions = act(obs)
            for i in playing:
                obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
                returns[i] += float(reward)
                lengths[i] += 1
                if terminated or truncated:
                    first[i] = {"seed": seeds[i], "return": returns[i], "length": lengths[i]}
            playing = [i for i in playing if first[i] is None]
    finally:
        for each in envs:
            each.close()
    return first


def run_episodes(act: Callable[[np.ndarray], np.ndarray], env: EnvChoice, num_episodes: int, seed: int,
                 played: Callable[[int], None] | None = None) -> list[dict]:
    """Play `num_episodes` episodes with `act`; episode j is seeded `seed + j`. Returns [{seed, return, length}].
    `played(n)` hears of each batch of up to MAX_PARALLEL_EPISODES episodes: n of them are done."""
    results = []
    for start in range(0, num_episodes, MAX_PARALLEL_EPISODES):
        n = min(MAX_PARALLEL_EPISODES, num_episodes - start)
        results.extend(play_seeds(act, env, [seed + start + i for i in range(n)]))
        if played:
            played(len(results))
    return results


def evaluate_agents(network: ActorCritic, params, env: EnvChoice, episodes: int, seeds: list[int],
                    timed: bool = False) -> list[dict]:
    """`evaluate` for agents stacked on the leading axis of `params`: agent i plays `episodes` deterministic
    episodes from seeds[i] on, every agent's in the same vector env, with one policy call per step for all.
    `timed` adds the wall seconds of them all to each summary."""
    started, agents, act = time.perf_counter(), len(seeds), _compiled(agents_greedy_action, network)
    per_batch = max(1, MAX_AGENT_EPISODES // agents)
    played: list[list[dict]] = [[] for _ in seeds]
    for start in range(0, episodes, per_batch):
        n = min(per_batch, episodes - start)
        batch = play_seeds(lambda obs: _agent_major(act(params, obs.reshape(agents, n, -1))), env,
                           [seed + start + j for seed in seeds for j in range(n)])  # agent-major
        for i in range(agents):
            played[i].extend(batch[i * n:(i + 1) * n])
    seconds = {"seconds": time.perf_counter() - started} if timed else {}
    return [{**summarize(agent_episodes), **seconds} for agent_episodes in played]


def _agent_major(actions: jax.Array) -> np.ndarray:
    """Actions (agents, n, ...) as one batch (agents * n, ...), agent-major."""
    actions = np.asarray(actions)
    return actions.reshape(-1, *actions.shape[2:])


def agents_greedy_action(network: ActorCritic, params, obs: jax.Array) -> jax.Array:
    """greedy_action for stacked parameters (agents, ...) and observations (agents, n, obs_dim)."""
    return jax.vmap(functools.partial(greedy_action, network))(params, obs)


def progress_lines(total: int, every: float = PROGRESS_SECONDS) -> Callable[[int], None]:
    """A `played` for run_episodes logging "played n/total episodes" after the first batch, then every `every`
    seconds, while episodes remain (one batch, the usual case, logs nothing)."""
    start = last = time.perf_counter()

    def played(n: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if n < total and (last == start or now - last >= every):
            last = now
            left = (now - start) / n * (total - n)
            eta = f"{left / 3600:.1f} h" if left >= 3600 else f"{left:.0f} s"
            log.info("played %d/%d episodes in %.0f s; about %s to go", n, total, now - start, eta)

    return played


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


def evaluate(policy: Policy, env: EnvChoice, episodes: int, seed: int, timed: bool = False) -> dict:
    """The summary of `episodes` deterministic episodes from seed `seed` on; `timed` adds their wall seconds."""
    start = time.perf_counter()
    summary = summarize(run_episodes(policy, env, episodes, seed))
    return {**summary, "seconds": time.perf_counter() - start} if timed else summary


def evaluate_experiment(path: str | Path, num_episodes: int, seed: int | None = None, sample: bool = False) -> dict:
    """Play an experiment's model: by default on the seeds its final evaluation played, deterministically
    (argmax); with `sample`, actions drawn from the policy with a key seeded by the first episode's seed."""
    act, spec, seed = _player(path, seed, sample)
    return summarize(run_episodes(act, saved_env(spec), num_episodes, seed, progress_lines(num_episodes)))


def render_episode_gif(path: str | Path, out: Path | None = None, seed: int | None = None, sample: bool = False,
                       max_steps: int = 1000, frame_every: int = 2, scale: int = 2) -> tuple[Path, float]:
    """Play one episode (as evaluate_experiment would) with rgb_array rendering and save it as an animated GIF
    (needs Pillow, which the `plot` extra brings): every `frame_every`-th frame, downscaled by `scale`."""
    from PIL import Image

    act, spec, seed = _player(path, seed, sample)
    env = saved_env(spec).make(render_mode="rgb_array", max_episode_steps=max_steps)
    frames, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed)
        for t in range(max_steps + 1):
            if t % frame_every == 0:
                frames.append(Image.fromarray(env.render()))
            action = act(np.asarray(obs)[None])[0]
            obs, reward, terminated, truncated, _ = env.step(int(action) if action.ndim == 0 else action)
            total += float(reward)
            if terminated or truncated:
                frames.append(Image.fromarray(env.render()))
                break
    finally:
        env.close()
    frames = [f.reduce(scale) for f in frames] if scale > 1 else frames
    out = out or ExperimentPaths.at(model_path(path).parent).episode_gif
    with replaced_atomically(out) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=1000 * frame_every // 50, loop=0)
    return out, total
