"""Start a data-parallel run's processes on this computer and report the main one's events.

`train_processes(job, processes, commands)` is `train(job, commands)` with `processes` processes
(one per CUDA GPU, or CPU processes with gloo): a generator of the same events, read from the
main process through a queue, so the CLI and the window's worker show them as they show a one-
process run. It uses torch's spawn (the frozen app has no `accelerate` script to call, and a
window's process must never be forked); each process gets the environment `accelerate launch`
would give it and sets itself up through accelerate (training.distributed.Together).

The user's commands reach the main process through flags shared between the processes; it
broadcasts them to the others at every step. A process that dies ends the others: the run fails
with what happened, and its last complete checkpoint stays the one `train` continues from.
"""
from __future__ import annotations

import os
import queue as queue_module
import signal
import socket
import time
import traceback
from typing import Any, Iterator

from transferstudio.core.commands import Commands
from transferstudio.core.events import Failed, Finished, Stopped

END_EVENTS = (Finished, Stopped, Failed)
POLL_S = 0.1
GRACE_S = 60.0  # after the main process's end, how long the others may take to leave


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_count_problem(processes: int, device: str = "auto") -> str | None:
    """Why `processes` processes cannot train here (None: they can)."""
    if processes < 2:
        return None
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device in ("auto", "cuda") and gpus:
        if processes > gpus:
            return f"{processes} processes were asked for, but this computer has {gpus} CUDA GPU(s)"
        return None
    if device == "cuda":
        return "no CUDA GPU is available on this computer"
    if device == "mps":
        return "Apple MPS trains in one process"
    return None  # CPU processes (gloo): a correctness check more than a speed-up


def _child(rank: int, world: int, port: int, job: Any, commands: Commands, events: Any, cpu: bool) -> None:
    """One process of the run (spawned): the environment `accelerate launch` sets, then `train`."""
    # Ctrl-C, a closed terminal, a logout reach the parent, which stops the run and lets the main
    # process save; a process whose parent is gone (killed, crashed) ends itself
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _end_with_parent(os.getppid())
    from transferstudio.project.lock import OWNER_PID_VARIABLE

    os.environ[OWNER_PID_VARIABLE] = str(os.getppid())  # the app that started the run owns its lock
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "HF_HUB_OFFLINE": "1"})
    if cpu:
        os.environ["TRANSFERSTUDIO_DEVICE"] = "cpu"
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    group = None
    try:
        import torch

        if cpu:
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from transferstudio.training.distributed import Together
        from transferstudio.training.trainer import train

        group = Together()
        for event in train(job, commands if group.main else Commands(), group):
            if group.main or isinstance(event, Failed):
                events.put((rank, event))
    except BaseException:  # a programming error: the parent shows it in full
        events.put((rank, ("crashed", traceback.format_exc())))
        raise
    finally:
        if group is not None:
            group.close()


def _end_with_parent(parent: int) -> None:
    """A watchdog thread: when the process that started this one is gone, end at once (the last
    complete checkpoint stays; an orphan would train on unseen, holding the GPUs and the lock)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def processes_here(asked: int, device: str = "auto") -> tuple[int, str | None]:
    """How many processes a project's saved GPUs setting gives on this computer, and a note when
    that is fewer: at most one per CUDA GPU, one without CUDA (an explicit --processes is taken
    as asked)."""
    if asked < 2:
        return 1, None
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() and device in ("auto", "cuda") else 0
    if gpus >= asked:
        return asked, None
    if gpus >= 2:
        return gpus, f"The project asks for {asked} GPUs; this computer has {gpus}, so {gpus} train together."
    return 1, f"The project asks for {asked} GPUs; this computer has {'one' if gpus else 'no CUDA GPU'}, so one " \
              "process trains (the result is the same, only slower)."


def train_processes(job: Any, processes: int, commands: Commands | None = None, *,
                    cpu: bool | None = None) -> Iterator[Any]:
    """The events of `job` trained by `processes` data-parallel processes (see the module doc).
    `cpu`: CPU processes even where CUDA GPUs exist (None: GPUs when there are some)."""
    import multiprocessing

    import torch.multiprocessing as tmp

    user = commands or Commands()
    if job.backbone is not None:
        raise ValueError("a data-parallel run loads its model in each process: pass no backbone")
    problem = process_count_problem(processes, job.project.config.device)
    if problem:
        yield Failed(f"The run cannot start {processes} training processes: {problem}.",
                     "Set GPUs to fewer in Settings ▸ Advanced (or --processes), or train with one process.")
        return
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available() or job.project.config.device == "cpu"
    context = multiprocessing.get_context("spawn")
    shared = Commands(event=context.Event)
    events = context.Queue()
    spawned = tmp.start_processes(_child, args=(processes, free_port(), job, shared, events, cpu),
                                  nprocs=processes, join=False, start_method="spawn")
    relay = _Relay(user, shared)
    ended = None
    elsewhere: tuple[Failed, float] | None = None  # another process's failure, while rank 0 may still say more
    try:
        while ended is None:
            relay.forward()
            if elsewhere is not None and time.monotonic() > elsewhere[1]:
                ended = elsewhere[0]
                yield ended
                break
            try:
                rank, event = events.get(timeout=POLL_S)
            except queue_module.Empty:
                dead = _dead(spawned)
                if dead is not None:
                    ended = _died(dead, relay.step)
                    yield ended
                continue
            if isinstance(event, tuple) and event[0] == "crashed":
                dead = _other_dead(spawned, rank)  # a process that lost its partner fails in a collective
                if dead is None:
                    raise RuntimeError(f"training process {rank} crashed:\n{event[1]}")
                ended = _died(dead, relay.step)
                yield ended
                break
            if rank != 0:  # another process failed: the run ends with it, or with rank 0's word on the
                # same problem (a problem every process meets, e.g. an unstable loss) when that follows
                if elsewhere is None:
                    elsewhere = (Failed(f"Training process {rank} of {processes}: {event.message}", event.advice,
                                        step=event.step, checkpoint=event.checkpoint), time.monotonic() + 5.0)
                continue
            relay.seen(event)
            if isinstance(event, END_EVENTS):
                ended = event
            yield event
    finally:
        _finish(spawned, job.project.folder, graceful=ended is not None and not isinstance(ended, Failed))
        events.close()


class _Relay:
    """Mirror the user's commands into the flags the main process reads."""

    def __init__(self, user: Commands, shared: Commands) -> None:
        self.user, self.shared = user, shared
        self.paused = False
        self.stopped = False
        self.step = 0

    def forward(self) -> None:
        user, shared = self.user, self.shared
        if user.stop_requested and not self.stopped:
            self.stopped = True
            shared.stop()
        if user.paused != self.paused:
            self.paused = user.paused
            shared.pause() if self.paused else shared.resume()
        if user.take_sample_request():
            shared.sample_now()
        if user.take_save_request():
            shared.save_now()

    def seen(self, event: Any) -> None:
        self.step = int(getattr(event, "step", self.step) or self.step)


def _dead(spawned: Any) -> tuple[int, int] | None:
    """(rank, exit code) of a process that ended abnormally while the run was still going (a
    process that ended normally said so through the queue, or is one of the others leaving after
    the last step while rank 0 still sends its last events)."""
    for rank, process in enumerate(spawned.processes):
        if process.exitcode not in (None, 0):
            return rank, process.exitcode
    return None


def _other_dead(spawned: Any, rank: int, wait_s: float = 5.0) -> tuple[int, int] | None:
    """A process other than `rank` that has ended (waiting a little for it to be seen as ended)."""
    deadline = time.monotonic() + wait_s
    while True:
        for other, process in enumerate(spawned.processes):
            # killed by a signal (the OOM killer, a kill): it could not say why itself
            if other != rank and process.exitcode is not None and process.exitcode < 0:
                return other, process.exitcode
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def _died(dead: tuple[int, int], step: int) -> Failed:
    rank, code = dead
    how = f"was killed (signal {-code})" if code < 0 else f"ended with exit code {code}"
    return Failed(f"Training process {rank} {how} near step {step}, so the run stopped.",
                  "The last complete checkpoint is kept: train again to continue from it (with as many "
                  "processes as you like).", step=step)


def _finish(spawned: Any, project_folder: Any, *, graceful: bool) -> None:
    """Wait for the processes to leave (a finished run's do, after the main one's last save); end
    those that do not (they ignore SIGTERM: the parent stops a run, so only a kill ends them), and
    remove the project's lock if the main process could not give it back (it was killed)."""
    from transferstudio.project.lock import release_left_for

    deadline = time.monotonic() + (GRACE_S if graceful else 2.0)
    for process in spawned.processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in spawned.processes:
        if process.is_alive():
            process.kill()
    for process in spawned.processes:
        process.join(timeout=10.0)
    if not any(process.is_alive() for process in spawned.processes):
        release_left_for(project_folder, os.getpid())
