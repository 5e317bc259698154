"""Orbax checkpoints: the train state every N env steps, and the final policy as a standalone model.

Orbax writes each checkpoint into a temporary directory and renames it into place when complete, so
`latest_step()` only ever sees whole checkpoints.
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxrl_lander.algos.common import TrainState


def _to_tree(state: TrainState) -> dict[str, Any]:
    # Orbax stores plain arrays; a typed PRNG key is kept as its raw uint32 data.
    return {"params": state.params, "opt_state": state.opt_state, "key": jax.random.key_data(state.key)}


class CheckpointStore:
    """Checkpoints of one experiment under `directory/<step>/`: train state plus JSON metadata."""

    def __init__(self, directory: str | Path, keep: int = 0, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True, enable_async_checkpointing=async_save
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    def save(self, step: int, state: TrainState, metadata: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_to_tree(state)), metadata=ocp.args.JsonSave(metadata)),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The state saved at `step`, shaped like `template` (a freshly initialised state of the same config)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_tree(template))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()),
        )
        tree = restored.state
        state = TrainState(
            params=tree["params"], opt_state=tree["opt_state"], key=jax.random.wrap_key_data(tree["key"])
        )
        return state, dict(restored.metadata)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_model(path: str | Path, params, policy_spec: dict[str, Any]) -> None:
    """Save final policy parameters and what is needed to rebuild the network (JSON) as one orbax checkpoint."""
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            path,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), policy=ocp.args.JsonSave(policy_spec)),
            force=True,
        )


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(params, policy_spec) from a directory written by save_model."""
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            path, args=ocp.args.Composite(params=ocp.args.StandardRestore(), policy=ocp.args.JsonRestore())
        )
    return restored.params, dict(restored.policy)
