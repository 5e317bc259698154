"""The compiled collector: envpool's env stepped inside a jitted program, from due point to due point.

One program call plays rollouts one after another as a lax.scan, each rollout itself a lax.scan (act, env step,
storage, episode statistics) turned into learning targets and learned from by the update, until the rollout
that holds or ends at the loop's next due point (a checkpoint, an evaluation, the end) is complete. The finished
episodes and the updates' metrics of all of them come back stacked, in one read: the host takes part once per
due point. Metrics records and progress are told afterwards, from what came back, at the steps they belong to.

The update runs inside that program when it runs on the device where envpool's env lives (the host CPU): with
the update on another device (a GPU), or split over several (vectorised agents, a device per core), the program
plays one rollout and the update is a program of its own on its devices, as it was before.

envpool resets an env on the step after a done, so a rollout holds reset-only steps; they are masked out of
the update (`next_step_targets`). The env steps they take count towards the run's steps.
"""

import time
from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lander.core.algos.base import Learner, Rollout, TrainState
from jaxrl_lander.training.collect import Episode, Stretch, bootstrap_cut
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs.envpool import episode_ends, make_pool
from jaxrl_lander.core.policy import ActorCritic, env_action, sample_action, state_value
from jaxrl_lander.training.runtime import Devices

ROLLOUT_KEYS = ("obs", "actions", "rewards", "dones", "valid")  # a checkpoint's pending rollout, with next_obs


class EnvCarry(NamedTuple):
    """What the scan carries from one vector step to the next, and the program from one update to the next."""

    handle: jax.Array  # envpool's token
    obs: jax.Array  # (B, obs_dim) the observation the next action is taken in
    resets_next: jax.Array  # (B,) bool: the previous step ended an episode, so the next one only resets
    episode_return: jax.Array  # (B,) float32, raw rewards of the episode so far
    episode_length: jax.Array  # (B,) int32


class Steps(NamedTuple):
    """The scan's output, time-major (T, B, ...)."""

    obs: jax.Array  # observation each action was taken in
    actions: jax.Array
    rewards: jax.Array  # raw, as the env gave them
    terminated: jax.Array
    truncated: jax.Array
    resets: jax.Array  # the step only reset its env
    ended: jax.Array  # an episode ended with this step
    episode_return: jax.Array  # of the episode so far (its return where `ended`)
    episode_length: jax.Array


def next_step_targets(rewards: jax.Array, terminated: jax.Array, truncated: jax.Array, resets: jax.Array,
                      next_values: jax.Array, gamma, reward_scale) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Learning targets of a rollout from an env that resets on the step after a done.

    cut_t   = truncated_t and not terminated_t
    r'_t    = reward_scale * r_t + gamma * v(s_{t+1}) * cut_t   (s_{t+1}: the observation step t returned, the
                                                                 true last one where step t ended an episode)
    done_t  = terminated_t or truncated_t or reset_t
    valid_t = 1 - reset_t                                       (a reset-only step is not learned from)
    Inputs are (T, B). Returns (rewards, dones, valid) as float32 (T, B).
    """
    chex.assert_rank([rewards, terminated, truncated, resets, next_values], 2)
    chex.assert_equal_shape([rewards, terminated, truncated, resets, next_values])
    cut = jnp.logical_and(truncated, jnp.logical_not(terminated)).astype(jnp.float32)
    targets = reward_scale * rewards + gamma * next_values * cut
    dones = jnp.logical_or(jnp.logical_or(terminated, truncated), resets).astype(jnp.float32)
    return targets.astype(jnp.float32), dones, 1.0 - resets.astype(jnp.float32)


def agents_act(network: ActorCritic, agents: int, params, obs: jax.Array, key: jax.Array):
    """sample_action for `agents` stacked parameters and keys; obs (agents * B, obs_dim), agent-major."""
    actions, key = jax.vmap(partial(sample_action, network))(params, obs.reshape(agents, -1, obs.shape[-1]), key)
    return actions.reshape(-1, *network.action_shape), key


def agents_value(network: ActorCritic, agents: int, params, obs: jax.Array) -> jax.Array:
    """state_value for `agents` stacked parameters; obs (..., agents * B, obs_dim), agent-major."""
    lead, size = obs.shape[:-2], obs.shape[-1]
    by_agent = jnp.moveaxis(obs.reshape(*lead, agents, -1, size), -3, 0)  # (agents, ..., B, obs_dim)
    values = jax.vmap(partial(state_value, network))(params, by_agent)
    return jnp.moveaxis(values, 0, -2).reshape(*lead, -1)


def play(state: TrainState, env: EnvCarry, rows: dict[str, jax.Array], start: jax.Array, stop: jax.Array,
         gamma: jax.Array, reward_scale: jax.Array, *, act, value, env_step
         ) -> tuple[EnvCarry, jax.Array, dict[str, jax.Array], Steps]:
    """Vector steps `start` to `stop` - 1 of a rollout, with their learning targets written into those rows of
    `rows` (by ROLLOUT_KEYS, n_steps long). One scan over all n_steps rows whatever the bounds, so one program
    serves a whole rollout, the rest of a resumed one and the last one cut short by total_timesteps; rows
    outside the bounds do not step the env. `act(params, obs, key)` and `value(params, obs)` are the policy's
    (vmapped over the agents of a stacked state); gamma and reward_scale are scalars or one per sub-env.
    Returns (env, the key to use next, rows, steps)."""
    n_steps = rows["obs"].shape[0]

    def live(env: EnvCarry, key: jax.Array):
        actions, key = act(state.params, env.obs, key)
        handle, (obs, rewards, terminated, truncated, _) = env_step(env.handle, actions)
        terminated, truncated = episode_ends(rewards, terminated, truncated)
        ended = jnp.logical_or(terminated, truncated)
        episode_return = jnp.where(env.resets_next, 0.0, env.episode_return + rewards)
        episode_length = jnp.where(env.resets_next, 0, env.episode_length + 1)
        step = Steps(env.obs, actions, rewards, terminated, truncated, env.resets_next, ended, episode_return,
                     episode_length)
        return (EnvCarry(handle, obs, ended, episode_return, episode_length), key), (step, obs)

    def skip(env: EnvCarry, key: jax.Array):
        outputs = jax.eval_shape(live, env, key)[1]
        return (env, key), jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), outputs)

    def one_step(carry, t):
        return jax.lax.cond(jnp.logical_and(start <= t, t < stop), live, skip, *carry)

    (env, key), (steps, next_obs) = jax.lax.scan(one_step, (env, state.key), jnp.arange(n_steps))
    rewards, dones, valid = next_step_targets(steps.rewards, steps.terminated, steps.truncated, steps.resets,
                                              value(state.params, next_obs), gamma, reward_scale)
    played = {"obs": steps.obs, "actions": steps.actions, "rewards": rewards, "dones": dones, "valid": valid}
    active = jnp.logical_and(start <= jnp.arange(n_steps), jnp.arange(n_steps) < stop)
    rows = {name: jnp.where(active.reshape((-1,) + (1,) * (rows[name].ndim - 1)), played[name], rows[name])
            for name in ROLLOUT_KEYS}
    return env, key, rows, steps


# The update goes inside the program only where the host turns it saves pay for its compile: compiled with
# envpool's env, whose XLA function is new in every process, the update is compiled afresh in every process too
# (JAX's persistent cache keeps it only as a program of its own). Measured on a 2-core CPU (docs/benchmarks.md,
# "Due points"), the seed experiment's A2C: the program compiles in 2.9 s with the update inside against 1.0 s
# without, and its 1,250 updates train in 2.7 s against 5.4 s; about 2 ms saved per update pays for the compile
# from some 1,000 updates on.
UPDATES_TO_FUSE = 1_000
MAX_STEPS_PER_CALL = 25_000  # env steps of all sub-envs: a stop waits for at most this many (about a second)


def rollouts_per_call(config: RunConfig, width: int) -> int:
    """The rollouts a program call can hold: enough to reach the farthest due point (a checkpoint or evaluation
    interval from a rollout's middle, or the end), but no more than MAX_STEPS_PER_CALL env steps of the pool's
    `width` sub-envs (where due points are far apart, a call ends between them)."""
    size = config.n_steps * config.num_envs
    interval = min(config.checkpoint_interval, config.eval_interval or config.total_timesteps, config.total_timesteps)
    return max(1, min(-(-interval // size) + 1, MAX_STEPS_PER_CALL // (config.n_steps * width)))


def stretch(state: TrainState, env: EnvCarry, rows: dict[str, jax.Array], alive: jax.Array, first: jax.Array,
            count: jax.Array, last_stop: jax.Array, gamma: jax.Array, reward_scale: jax.Array, *, play_rollout,
            update, length: int):
    """`count` rollouts one after another (a scan of `length`; the iterations after `count` do nothing), each
    learned from by `update(state, rollout, alive)` when it is complete (with `update` None, none is: the caller
    updates). The first starts at row `first` (the rest of a rollout in progress), the last stops before row
    `last_stop` (total_timesteps). An agent whose update is not finite is no longer `alive`: its state stays as
    it was. Returns (env, rows, the state after the last update, the state that played the last rollout with
    its key advanced, and per rollout stacked: `ended`, `episode_return`, `episode_length` (n_steps, B) and the
    update's `metrics`)."""
    n_steps = rows["obs"].shape[0]

    def one(carry, k):
        state, env, rows, alive, _ = carry
        start = jnp.where(k == 0, first, 0)
        stop = jnp.where(k == count - 1, last_stop, n_steps)
        env, key, rows, steps = play_rollout(state, env, rows, start, stop, gamma, reward_scale)
        acting = state.replace(key=key)
        played = {"ended": steps.ended, "episode_return": steps.episode_return,
                  "episode_length": steps.episode_length}
        if update is None:
            return (acting, env, rows, alive, acting), {**played, "metrics": {}}
        rollout = Rollout(rows["obs"], rows["actions"], rows["rewards"], rows["dones"], env.obs, rows["valid"])
        skipped = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(update, acting, rollout, alive))
        state, metrics = jax.lax.cond(stop == n_steps, update, lambda *_: (acting, skipped[1]), acting, rollout, alive)
        alive = jnp.where(stop == n_steps, metrics["taken_in"], alive)
        return (state, env, rows, alive, acting), {**played, "metrics": metrics}

    def idle(carry, k):
        return carry, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(one, carry, k)[1])

    def step(carry, k):
        return jax.lax.cond(k < count, one, idle, carry, k)

    (state, env, rows, _, acting), played = jax.lax.scan(step, (state, env, rows, alive, state), jnp.arange(length))
    return env, rows, state, acting, played


class CompiledCollector:
    """envpool's env stepped inside a jitted program on the act device (the host CPU unless asked otherwise),
    where envpool's env lives; the update runs on the update device, inside the program when `update_inside`
    (by default where it pays: UPDATES_TO_FUSE) and that device is the act device. A rollout cut short by
    total_timesteps is kept for a resume that gives more steps, as the host collector keeps it.

    With `agents` (vectorised agents), the state is `agents` train states stacked on a leading axis and one pool
    of agents x num_envs sub-envs plays them all, agent-major: agent i's sub-envs are i * num_envs onwards.
    `gamma` and `reward_scale` are then one per agent; `learner.place` puts a tree where its update runs."""

    normalizer = None  # the config refuses normalisation with this collector

    def __init__(self, config: RunConfig, learner: Learner, devices: Devices, agents: int | None = None,
                 gamma=None, reward_scale=None, update_inside: bool | None = None):
        self.config, self.learner, self.devices, self.agents = config, learner, devices, agents
        self.num_envs, self.n_steps = config.num_envs, config.n_steps  # num_envs: of one agent
        self.width = config.num_envs * (agents or 1)  # the pool's sub-envs
        self.pool = self.env = self.program = None
        network = learner.network
        if agents is None:
            self.act, self.value = partial(sample_action, network), partial(state_value, network)
            self.targets = (np.float32(config.gamma), np.float32(config.reward_scale))
        else:
            self.act, self.value = partial(agents_act, network, agents), partial(agents_value, network, agents)
            self.targets = tuple(np.repeat(np.asarray(v, np.float32), self.num_envs) for v in (gamma, reward_scale))
        self.value_of = jax.jit(self.value)
        update_devices = learner.devices if agents else [devices.update]
        self.length = rollouts_per_call(config, self.width)
        if update_inside is None:  # where it pays (UPDATES_TO_FUSE)
            update_inside = self.length > 2 and config.total_timesteps // config.rollout_size >= UPDATES_TO_FUSE
        self.update_inside = update_inside and update_devices == [devices.act]
        # The rollout in progress or just completed: its first env step (None: none played yet, or a resumed
        # checkpoint's, not played on yet), its n_steps rows (on the device), how many are filled, and the
        # observation after the last filled one while it is not on the device.
        self.rollout_start: int | None = None
        self.rows, self.filled, self.next_obs = self._zeros(), 0, None
        self._host_rows: dict[str, np.ndarray] | None = None  # a host copy of `rows`, made for a checkpoint

    def _zeros(self) -> dict[str, np.ndarray]:
        n, b = self.n_steps, self.width
        network = self.learner.network
        shapes = {"obs": (n, b, self.learner.obs_dim), "actions": (n, b, *network.action_shape)}
        return {name: np.zeros(shapes.get(name, (n, b)), network.action_dtype if name == "actions" else np.float32)
                for name in ROLLOUT_KEYS}

    def start(self, env_seeds: list[int]) -> None:
        config, b = self.config, self.width
        # agent-major, each agent's sub-envs seeded as in its standalone run, whatever its companions
        self.pool = make_pool(config.env_id, [seed + i for seed in env_seeds for i in range(self.num_envs)])
        self.env = jax.device_put(EnvCarry(self.pool.handle, self.pool.first_obs, np.zeros(b, bool),
                                           np.zeros(b, np.float32), np.zeros(b, np.int32)), self.devices.act)
        network, pool_step = self.learner.network, self.pool.step
        env_step = lambda handle, actions: pool_step(handle, env_action(network, actions))  # noqa: E731
        play_rollout = partial(play, act=self.act, value=self.value, env_step=env_step)
        self.program = jax.jit(partial(stretch, play_rollout=play_rollout, length=self.length if self.update_inside
                                       else 1, update=self.learner.traced_update if self.update_inside else None))
        # Committed to the act device from the first call on, as the programs' own outputs are: an argument that
        # is not would make the first call a signature of its own, and compile both programs twice.
        self.rows = jax.device_put(self.rows, self.devices.act)
        self.targets = jax.device_put(self.targets, self.devices.act)

    def prepare(self, state: TrainState) -> None:
        """Compile the program (with the update inside: seconds; in every process, as it holds envpool's env),
        kept out of JAX's persistent cache, which could never use it again."""
        alive = np.bool_(True) if self.agents is None else np.ones(self.agents, bool)
        ints = (np.int32(0),) * 3
        cache = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            self.program = self.program.lower(self._acting(state), self.env, self.rows, alive, *ints,
                                              *self.targets).compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", cache)

    def _to(self, device: jax.Device, tree):
        """`tree` on `device`; as it is when both devices are one (a put per leaf costs about 0.1 ms per update)."""
        return tree if self.devices.act == self.devices.update else jax.device_put(tree, device)

    def _to_update(self, tree):
        return self.learner.place(tree) if self.agents else self._to(self.devices.update, tree)

    def _acting(self, state: TrainState) -> TrainState:
        """`state` on the act device (stacked agents' states come from the update's mesh)."""
        return jax.device_put(state, self.devices.act) if self.agents else self._to(self.devices.act, state)

    def advance(self, state: TrainState, timestep: int, due: int, alive: list[bool], should_stop) -> Stretch:
        """Whole rollouts (the rest of the one in progress first) until the one holding `due`, or total_timesteps,
        whatever `should_stop` says: the loop makes the checkpoints and evaluations due inside the last one
        afterwards."""
        b, n = self.num_envs, self.n_steps
        if self.filled == n:  # the previous stretch completed its last rollout
            self.filled = 0
        first = self.filled
        begins = timestep - first * b  # the env step the rollout in progress began at
        count = min(-(-(due - begins) // (n * b)), self.length)
        self.rollout_start = begins + (count - 1) * n * b  # the last rollout's
        last_stop = min(n, -(-(self.config.total_timesteps - self.rollout_start) // b))
        complete = last_stop == n
        alive = np.bool_(alive[0]) if self.agents is None else np.asarray(alive, bool)
        started = time.perf_counter()
        if self.update_inside:
            self.env, self.rows, state, acting, played = self.program(
                self._acting(state), self.env, self.rows, alive, np.int32(first), np.int32(count),
                np.int32(last_stop), *self.targets)
            metrics, learned_from = played["metrics"], count if complete else count - 1
            state = state if complete else None
            acting = self._to_update(acting)
        else:  # each update a program of its own on its device(s), dispatched one after another, read once
            parts, metrics = [], []
            # on the update's device, committed as the updates' outputs are (one signature): each update's
            # `taken_in` is the next one's alive, without a read
            alive = self.learner.place(alive) if self.agents else jax.device_put(alive, self.devices.update)
            for k in range(count):
                stop = last_stop if k == count - 1 else n
                self.env, self.rows, _, acting, part = self.program(
                    self._acting(state), self.env, self.rows, alive, np.int32(first if k == 0 else 0), np.int32(1),
                    np.int32(stop), *self.targets)
                parts.append(part)
                acting = self._to_update(acting)
                if stop == n:
                    rows = self.rows
                    rollout = self._to_update(Rollout(rows["obs"], rows["actions"], rows["rewards"], rows["dones"],
                                                      self.env.obs, rows["valid"]))
                    state, update_metrics = self.learner.update(acting, rollout, alive=alive)
                    alive = update_metrics["taken_in"]  # a failed agent stays failed
                    metrics.append(update_metrics)
            played = {name: [part[name] for part in parts] for name in ("ended", "episode_return", "episode_length")}
            learned_from = len(metrics)
            state = state if complete else None
        self.filled, self.next_obs, self._host_rows = last_stop, None, None

        def read() -> tuple[list[list[list[Episode]]], list[dict[str, np.ndarray]]]:
            ended, returns, lengths, by_rollout = jax.device_get(
                (played["ended"], played["episode_return"], played["episode_length"], metrics))
            if not self.update_inside:  # a program call per rollout, an update's metrics each
                ended, returns, lengths = (np.concatenate(x) for x in (ended, returns, lengths))
                by_rollout = {name: np.stack([m[name] for m in by_rollout]) for name in by_rollout[0]
                              } if by_rollout else {}
            episodes = []
            for k in range(count):  # by step then sub-env: the order they ended
                by_agent, begun = [[] for _ in range(self.agents or 1)], begins + k * n * b
                for t, i in zip(*np.nonzero(ended[k])):
                    by_agent[i // b].append(Episode(begun + (int(t) + 1) * b, float(returns[k, t, i]),
                                                    int(lengths[k, t, i])))
                episodes.append(by_agent)
            return episodes, [{name: value[k] for name, value in by_rollout.items()} for k in range(learned_from)]

        ends = [begins + (k + 1) * n * b for k in range(count - 1)] + [self.rollout_start + last_stop * b]
        return Stretch(ends, acting, state, read, started)

    def pending(self, timestep: int) -> tuple[dict[str, np.ndarray], int]:
        """The rows of the rollout in progress played before env step `timestep`: a checkpoint inside a
        completed rollout holds its first rows; one at its end holds none."""
        arrays = self._zeros()
        arrays["next_obs"] = np.zeros((self.width, self.learner.obs_dim), np.float32)
        filled = self.filled if self.rollout_start is None else (timestep - self.rollout_start) // self.num_envs
        if not 0 < filled < self.n_steps:
            return arrays, 0
        if self._host_rows is None:  # once per rollout, and only when a checkpoint falls inside it
            self._host_rows = jax.device_get(self.rows)
        for name in ROLLOUT_KEYS:
            arrays[name][:filled] = self._host_rows[name][:filled]
        if filled < self.filled:
            arrays["next_obs"][...] = self._host_rows["obs"][filled]
        else:
            arrays["next_obs"][...] = jax.device_get(self.env.obs) if self.next_obs is None else self.next_obs
        return arrays, filled

    def resume_pending(self, state: TrainState, arrays: dict[str, np.ndarray], filled: int) -> None:
        """Play the rest of a checkpoint's partly collected rollout (see `bootstrap_cut`) in the next collect."""
        rows = {name: np.array(arrays[name]) for name in (*ROLLOUT_KEYS, "next_obs")}
        params = self._acting(state).params
        bootstrap_cut(rows, filled, lambda obs: self.value_of(params, obs), np.asarray(self.targets[0]))
        self.next_obs = rows.pop("next_obs")
        self.rows, self._host_rows = jax.device_put(rows, self.devices.act), rows
        self.filled, self.rollout_start = filled, None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.env.close()
