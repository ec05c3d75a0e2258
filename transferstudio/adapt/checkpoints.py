"""Checkpoints that survive crashes: written into a temporary folder, renamed into place,
then marked complete. The previous good one is deleted only after the new one is complete.

Layout of one checkpoint folder `checkpoints/step-000100/`:
  weights.safetensors   trainable weights, keys prefixed by module role ("unet.", "text_encoder.")
  ema.safetensors       EMA weights (optional)
  optimizer.pt          optimizer + LR scheduler state (our own file, read with weights_only=True)
  rng.pt                RNG states (global torch, CUDA, data, noise)
  state.json            step, data position, loss
  COMPLETE              written last
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.core.atomic import fsync_dir, write_text_atomic
from transferstudio.core.errors import CheckpointError
from transferstudio.project.run import (CHECKPOINTS, EMA, MARKER, WEIGHTS, CheckpointInfo,  # noqa: F401
                                        checkpoint_name, complete_checkpoints, latest_checkpoint)

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported inside the functions that need them. The torch-free
# listing (which checkpoints are complete) belongs to the run folder: project.run.


def write_checkpoint(run_dir: Path, step: int, *, weights: dict[str, torch.Tensor],
                     optimizer: dict[str, Any] | None, rng: dict[str, Any], state: dict[str, Any],
                     ema: dict[str, torch.Tensor] | None = None, keep: int = 3,
                     metadata: dict[str, str] | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{checkpoint_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / WEIGHTS,
                  metadata=metadata or {})
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / EMA)
        if optimizer is not None:
            torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        fsync_dir(tmp)
        if final.exists():  # an older checkpoint of the same step (e.g. save-now twice): replace it
            old = folder / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(folder)
        write_text_atomic(final / MARKER, "ok\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep=keep)
    return final


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove leftovers of interrupted writes."""
    folder = Path(run_dir) / CHECKPOINTS
    good = complete_checkpoints(run_dir)
    for info in good[:-keep] if keep > 0 else []:
        shutil.rmtree(info.path, ignore_errors=True)
    kept = {c.path.name for c in good[-keep:]}
    for path in folder.iterdir():
        if path.name.startswith((".tmp-", ".old-")) or (path.name.startswith("step-") and path.name not in kept):
            shutil.rmtree(path, ignore_errors=True)


def read_weights(checkpoint: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(Path(checkpoint) / name)
    except (OSError, RuntimeError, ValueError) as exc:  # safetensors raises these on damage
        raise CheckpointError(f"The checkpoint {checkpoint} cannot be read ({exc}).",
                              "Delete that checkpoint folder; the previous one will be used.") from None


def read_torch(checkpoint: Path, name: str) -> Any:
    import torch

    try:
        return torch.load(Path(checkpoint) / name, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint {checkpoint} cannot be read ({exc}).",
                              "Delete that checkpoint folder; the previous one will be used.") from None


def split_roles(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet.a.b": t} -> {"unet": {"a.b": t}}"""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        role, _, rest = key.partition(".")
        out.setdefault(role, {})[rest] = value
    return out


def join_roles(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v for role, sd in parts.items() for k, v in sd.items()}
