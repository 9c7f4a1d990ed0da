"""How a training step stops: SIGTERM/SIGINT stop after a checkpoint, SIGUSR1 saves one and goes on.

The flag is only set in the handler; the training loop checks it between steps, so a checkpoint is never written
from inside a signal handler. A step stopped by a signal exits with 128 + the signal, which the runner records as
interrupted (and Slurm requeues, see templates/sbatch.j2).
"""

from __future__ import annotations

import signal


class StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self.save_now = False

    def install(self) -> StopFlag:
        def stop(signum: int, _frame: object) -> None:
            self.signal = signum

        def save(_signum: int, _frame: object) -> None:
            self.save_now = True

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, stop)
        signal.signal(signal.SIGUSR1, save)
        return self

    @property
    def stopped_by(self) -> str:
        return signal.Signals(self.signal or signal.SIGTERM).name


def ignore_stop_signals(_worker: int = 0) -> None:
    """DataLoader worker_init_fn: workers leave SIGTERM/SIGINT to the training process, which stops them after
    its checkpoint (a worker killed first would fail the batch the checkpoint waits for)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_workers(loader_iterator: object) -> None:
    """Shut down a DataLoader iterator's worker processes now. They ignore SIGTERM (ignore_stop_signals), and an
    iterator left alive until exit (an endless sampler, an epoch left early) makes multiprocessing's exit handler
    wait on them forever: a test process that never exited, seen in CI."""
    shutdown = getattr(loader_iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def stop_flag() -> StopFlag:
    return StopFlag().install()


def exit_code(stopped_by: str | None) -> int:
    """128 + signal when a signal stopped training (the runner records it as interrupted), else 0."""
    if stopped_by in ("SIGTERM", "SIGINT"):
        return 128 + int(signal.Signals[stopped_by])
    return 0
