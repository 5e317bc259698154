"""Run the command line, but SIGKILL the process at one chosen moment (for the crash-safety tests).

    python tests/kill_at.py POINT -- train --algo a2c ...

POINT is one of
    rollout:N        the N-th vector-env step of the run (mid-rollout when N is not a multiple of n_steps)
    checkpoint:STEP  the checkpoint of STEP, fully written to its temporary directory but not yet renamed
    interrupt:STEP   as checkpoint:STEP, but a SIGINT (Ctrl-C) instead of a SIGKILL, and the checkpoint is kept
    model            the final model, likewise written but not renamed
    swap             the final model written, the one before it moved aside, the new one not yet in its place
    json:N           the N-th JSON write (metrics or results), written to its temporary file but not renamed
    journal:N        the N-th append to the metrics journal, half of its bytes written

Nothing is mocked: the real run proceeds until the chosen moment and then dies by SIGKILL, as it would from
the out-of-memory killer or a pre-emption.
"""

import os
import signal
import sys
import types
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, _, arg = point.partition(":")
    calls = [0]

    def nth_call() -> bool:
        calls[0] += 1
        return calls[0] == int(arg)

    if kind == "rollout":
        import jaxrl_lander.training.collect as collect

        step_envs = collect.step_envs

        def step_then_maybe_die(*args, **kwargs):
            if nth_call():
                die()
            return step_envs(*args, **kwargs)

        collect.step_envs = step_then_maybe_die
    elif kind in ("checkpoint", "interrupt"):
        import jaxrl_lander.storage.checkpoint as checkpoint

        real_os = checkpoint.os

        def rename_or_die(src, dst):
            if Path(dst).name == arg and kind == "interrupt" and not calls[0]:
                calls[0] = 1
                os.kill(os.getpid(), signal.SIGINT)
            elif Path(dst).name == arg and kind == "checkpoint":
                die()
            return real_os.rename(src, dst)

        checkpoint.os = types.SimpleNamespace(**{**vars(real_os), "rename": rename_or_die})
    elif kind == "model":
        from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath

        finalize = AtomicRenameTemporaryPath.finalize

        async def finalize_or_die(self):
            if self._final_path.name.endswith("_model.new"):
                die()
            return await finalize(self)

        AtomicRenameTemporaryPath.finalize = finalize_or_die
    elif kind == "swap":
        import jaxrl_lander.storage.model as model

        real_os = model.os

        def rename_then_die(src, dst):
            real_os.rename(src, dst)
            if str(dst).endswith("_model.old"):
                die()

        model.os = types.SimpleNamespace(**{**vars(real_os), "rename": rename_then_die})
    elif kind in ("json", "journal"):
        import jaxrl_lander.storage.files as files

        real_os = files.os

        def replace_or_die(src, dst):
            if nth_call():
                die()
            return real_os.replace(src, dst)

        def write_half_or_die(fd, data):
            if nth_call():
                real_os.write(fd, data[:len(data) // 2])
                die()
            return real_os.write(fd, data)

        hook = {"replace": replace_or_die} if kind == "json" else {"write": write_half_or_die}
        files.os = types.SimpleNamespace(**{**vars(real_os), **hook})
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, separator, *cli_args = sys.argv[1:]
    assert separator == "--", "usage: kill_at.py POINT -- ARGS"
    arm(point)
    from jaxrl_lander.cli.main import main

    sys.exit(main(cli_args))
