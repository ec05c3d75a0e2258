"""A run's processes: one alone, or several training data-parallel through accelerate.

The shape of a data-parallel step (why not DDP's): the batch size is the global batch. Every
process loads the same global batch (the same data generator, so the same pictures, crops and
caption variations), trains its rows of it (`rows`), draws each picture's noise for the whole
global batch and keeps its rows (backbones.batch_draws), and weights its loss by its share of
the pictures. Gradients are summed over the processes before clipping, so every process clips
and steps the same gradient and the replicas never drift apart. Two processes × 2 pictures
therefore train what one × 4 trains, the generators stay in step everywhere (a run continues
with another count from the same checkpoint), and only the main process writes anything.

accelerate sets the processes up (`PartialState`: the environment that `accelerate launch`, or
our own launcher, gives each process; gloo on CPUs, NCCL on CUDA GPUs, one GPU per process);
torch.distributed carries the sums and broadcasts.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch

from transferstudio.backbones.batch_draws import Rows

# A process that waits longer than this for the others gives up. Long on purpose: the main process
# draws previews and writes checkpoints while the others wait, and a dead process is noticed by
# the launcher (which ends the others) well before this.
WAIT_LIMIT = datetime.timedelta(hours=6)


def launched_together() -> bool:
    """Whether this process is one of several started together (`accelerate launch`, torchrun or
    our own launcher): WORLD_SIZE > 1 in its environment."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


class Alone:
    """The run's only process: every collective is the identity."""

    world = 1
    rank = 0
    main = True
    device: torch.device | None = None  # None: the run's device setting decides

    def rows(self, count: int) -> Rows | None:
        return None

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        pass

    def sum(self, value: float) -> float:
        return value

    def share(self, value: Any) -> Any:
        """The main process's `value`, in every process."""
        return value

    def flags(self, values: list[int]) -> list[int]:
        return values

    def share_from(self, rank: int, value: Any) -> Any:
        """Process `rank`'s `value`, in every process."""
        return value

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class Together(Alone):
    """One of `world` processes of a data-parallel run (this one is `rank`; 0 is the main one)."""

    def __init__(self) -> None:
        from accelerate import PartialState

        cuda = torch.cuda.is_available() and os.environ.get("TRANSFERSTUDIO_DEVICE", "") != "cpu"
        self.state = PartialState(cpu=not cuda, timeout=WAIT_LIMIT)
        self.world = int(self.state.num_processes)
        self.rank = int(self.state.process_index)
        self.main = bool(self.state.is_main_process)
        self.device = torch.device(self.state.device) if cuda else torch.device("cpu")
        # the collectives' own device: NCCL carries CUDA tensors, gloo CPU ones
        self._carrier = self.device if self.device.type == "cuda" else torch.device("cpu")

    def rows(self, count: int) -> Rows:
        return Rows((count * self.rank) // self.world, (count * (self.rank + 1)) // self.world, count)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a missing one counts as zeros: a
        process whose share of a small batch was empty), flattened per dtype into one call each."""
        import torch.distributed as dist

        # which parameters got a gradient anywhere (a layer an adapter's module dropout skipped
        # everywhere keeps none, as it would alone: the optimizer then leaves it as it is)
        had = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self._carrier)
        dist.all_reduce(had, op=dist.ReduceOp.MAX)
        params = [p for p, got in zip(params, had.tolist()) if got]
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for same in by_dtype.values():
            for bucket in _buckets(same):
                flat = torch.cat([p.grad.reshape(-1) for p in bucket]).to(self._carrier)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                offset = 0
                for p in bucket:
                    n = p.grad.numel()
                    p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                    offset += n

    def sum(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self._carrier)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def share(self, value: Any) -> Any:
        return self.share_from(0, value)

    def share_from(self, rank: int, value: Any) -> Any:
        import torch.distributed as dist

        box = [value if self.rank == rank else None]
        dist.broadcast_object_list(box, src=rank, device=self._carrier)
        return box[0]

    def flags(self, values: list[int]) -> list[int]:
        import torch.distributed as dist

        t = torch.tensor(values if self.main else [0] * len(values), dtype=torch.int64, device=self._carrier)
        dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except (RuntimeError, ValueError):
                pass


BUCKET_ELEMENTS = 1 << 25  # 32 M numbers (128 MB in fp32) per all-reduce: a full fine-tune's
# gradients are summed a bucket at a time instead of copied whole


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    out: list[list[torch.nn.Parameter]] = [[]]
    size = 0
    for p in params:
        if out[-1] and size + p.numel() > BUCKET_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.numel()
    return [b for b in out if b]


def slice_batch(batch: Any, rows: Rows | None) -> Any:
    """This process's rows of a global batch (class pictures are a part of their own: the
    objective's `parts` hands them over separately, to be cut by their own count)."""
    if rows is None:
        return batch
    import dataclasses

    cut = slice(rows.start, rows.stop)
    changes: dict[str, Any] = {
        "pixels": batch.pixels[cut], "captions": list(batch.captions[cut]),
        "original_sizes": list(batch.original_sizes[cut]), "crop_top_left": list(batch.crop_top_left[cut])}
    if getattr(batch, "masks", None) is not None:
        changes["masks"] = batch.masks[cut]
    if getattr(batch, "keys", None) is not None:
        changes["keys"] = list(batch.keys[cut])
    return dataclasses.replace(batch, **changes)


class FollowedCommands:
    """The commands every process acts on at the same step: the main process reads the user's
    (stop, pause, preview now, save now) and broadcasts them once per step (`sync`); the others
    follow. A paused run syncs every second, so nobody waits in a collective for long."""

    def __init__(self, inner: Any, group: Alone) -> None:
        self.inner, self.group = inner, group
        self._stop = self._paused = self._sample = self._save = False

    def sync(self, wait: float = 0.0) -> None:
        inner = self.inner
        values = [0, 0, 0, 0]
        if self.group.main:
            if wait and inner.paused and not inner.stop_requested:
                waiter = getattr(inner, "wait_for_attention", None)
                if waiter is not None:
                    waiter(wait)
            values = [int(inner.stop_requested), int(inner.paused), int(inner.take_sample_request()),
                      int(inner.take_save_request())]
        stop, paused, sample, save = self.group.flags(values)
        self._stop, self._paused = bool(stop), bool(paused) and not stop
        self._sample = self._sample or bool(sample)
        self._save = self._save or bool(save)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def take_sample_request(self) -> bool:
        taken, self._sample = self._sample, False
        return taken

    def take_save_request(self) -> bool:
        taken, self._save = self._save, False
        return taken

    def wait_while_paused_unless_asked(self) -> None:
        while self._paused and not self._stop and not self._sample and not self._save:
            self.sync(wait=1.0)
