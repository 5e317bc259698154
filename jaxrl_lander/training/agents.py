"""The agent axis of a run of several agents (seeds, and float hyperparameters that are traced values): their
train states stacked on a leading axis, and one learner whose update is vmapped over that axis and sharded over
the local devices. A run of one agent has no such axis (run.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_lander.core.algos.base import Learner, Rollout, TrainState
from jaxrl_lander.training.runtime import Devices


def stack(trees: list):
    """The trees stacked on a new leading axis, leaf by leaf."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def on_host(state: TrainState) -> TrainState:
    """Stacked train states copied to the host in one transfer (slicing device arrays leaf by leaf costs a
    dispatch each); the keys as their raw data."""
    return jax.device_get(state.replace(key=jax.random.key_data(state.key)))


def agent_of(host: TrainState, i: int) -> TrainState:
    """Agent i's train state, of stacked ones copied by `on_host`."""
    state = jax.tree.map(lambda leaf: leaf[i], host)
    return state.replace(key=jax.random.wrap_key_data(state.key))


def _by_agent(rollout: Rollout, agents: int) -> Rollout:
    """A rollout of agents x B sub-envs (agent-major) as `agents` rollouts stacked on a leading axis."""
    def time_major(x):  # (T, agents * B, ...) -> (agents, T, B, ...)
        return None if x is None else x.reshape(x.shape[0], agents, -1, *x.shape[2:]).swapaxes(0, 1)

    last_obs = rollout.last_obs.reshape(agents, -1, rollout.last_obs.shape[-1])
    return Rollout(*map(time_major, rollout[:4]), last_obs, time_major(rollout.valid))


class AgentsLearner:
    """The learners of agents of one program as one: their update vmapped over the stacked states, hyperparameters
    stacked beside them. Inside the update the agent axis is split over every local device of the update's kind
    (padded with copies of the last agent to a multiple of their number, the copies' results dropped); outside
    it, the stacked trees are whole on each device."""

    def __init__(self, learners: list[Learner], devices: Devices):
        first, self.learners, agents = learners[0], learners, len(learners)
        self.config, self.network, self.obs_dim = first.config, first.network, first.obs_dim
        local = jax.local_devices(backend=devices.update.platform)
        self.mesh = Mesh(np.array(local[:agents]), ("agents",))
        shards = int(self.mesh.devices.size)
        padded = -(-agents // shards) * shards
        split = NamedSharding(self.mesh, PartitionSpec("agents"))
        self.whole = NamedSharding(self.mesh, PartitionSpec())
        self.hparams = self.place(stack([learner.hparams for learner in learners]))
        self.devices = list(self.mesh.devices.flat)  # where the update runs
        inner = first.update.func  # the jitted pure update of one agent; under vmap it is traced once for all

        def update(state, rollout, hparams, alive):
            def spread(x):  # (agents, ...) -> (padded, ...), split over the devices
                x = jnp.concatenate([x, jnp.repeat(x[-1:], padded - agents, axis=0)]) if padded > agents else x
                return jax.lax.with_sharding_constraint(x, split)

            args = jax.tree.map(spread, (state, _by_agent(rollout, agents), hparams, alive))
            return jax.tree.map(lambda x: x[:agents], jax.vmap(inner)(*args))

        self._update = jax.jit(update, out_shardings=self.whole)

    def place(self, tree):
        """A tree whole on every device of the mesh."""
        return jax.device_put(tree, self.whole)

    def update(self, state: TrainState, rollout: Rollout, alive=None):
        """The agents' updates; `alive` (one bool per agent, default all) as the update of one agent takes it."""
        alive = np.ones(len(self.learners), bool) if alive is None else alive  # a device array is not read
        return self._update(self.place(state), self.place(rollout), self.hparams, self.place(alive))

    def traced_update(self, state: TrainState, rollout: Rollout, alive: jax.Array):
        """`update` inside another program that runs on this learner's one device."""
        return self._update(state, rollout, self.hparams, alive)

    def learning_rate_at(self, update: int, agent: int = 0) -> float:
        return self.learners[agent].learning_rate_at(update)
