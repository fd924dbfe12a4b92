"""Run a dynlm script and SIGKILL it at a chosen point (tests of resume after a kill).

    python tests/kill_wrapper.py step:N   scripts/train.py ARGS...   # right after step N (before its checkpoint)
    python tests/kill_wrapper.py write:N  scripts/train.py ARGS...   # halfway through the N-th checkpoint write

A kill is the process's end with no clean-up of any kind: nothing in dynlm runs after it.
"""
import io
import os
import runpy
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_step(n: int) -> None:
    import dynlm.run.scaffold as scaffold

    real = scaffold.budget_exhausted

    def budget_exhausted(trainer_cfg, progress):  # asked right after every step
        if progress.step == n:
            _die()
        return real(trainer_cfg, progress)

    scaffold.budget_exhausted = budget_exhausted


def _kill_during_write(n: int) -> None:
    import dynlm.run.checkpoint as checkpoint

    real, calls = checkpoint.torch.save, [0]

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # not a file (the statistics cache serialises in memory first)
            return real(obj, f, *args, **kwargs)
        calls[0] += 1
        if calls[0] < n:
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: buf.tell() // 2])  # half a checkpoint on disk, then the end
        f.flush()
        os.fsync(f.fileno())
        _die()

    checkpoint.torch.save = save


if __name__ == "__main__":
    point, script = sys.argv[1], sys.argv[2]
    kind, n = point.split(":")
    {"step": _kill_after_step, "write": _kill_during_write}[kind](int(n))
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
