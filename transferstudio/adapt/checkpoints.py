"""Checkpoints that survive crashes: written into a temporary folder, renamed into place,
then marked complete. The previous good one is deleted only after the new one is complete.

Layout of one checkpoint folder `checkpoints/step-000100/`:
  weights.safetensors   trainable weights, keys prefixed by module role ("unet.", "text_encoder.")
  ema.safetensors       EMA weights (optional)
  optimizer.pt          optimizer + LR scheduler state (our own file, read with weights_only=True)
  rng.pt                RNG states (global torch, CUDA, data, noise)
  state.json            step, data position, loss
  manifest.json         size and SHA-256 of every file above (checked when a checkpoint is chosen)
  COMPLETE              written last

Every file is fsynced before the folder is renamed and marked complete (a power cut must not
leave a "complete" checkpoint with holes). Before each write the free space is checked against
the previous checkpoint's size (or the tensors' byte count); when it is short, older complete
checkpoints are removed first, keeping the newest; a full disk is one sentence, never a traceback.
A checkpoint is verified when it is chosen (`newest_good`): sizes and hashes from its manifest,
or, for older checkpoints without one, its safetensors headers and a weights-only torch.load.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from transferstudio.core import storage
from transferstudio.core.atomic import fsync_dir, write_text_atomic
from transferstudio.core.errors import CheckpointError
from transferstudio.core.storage import sha256_file
from transferstudio.project.run import (CHECKPOINTS, EMA, MARKER, WEIGHTS, CheckpointInfo,  # noqa: F401
                                        checkpoint_name, complete_checkpoints, latest_checkpoint)

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"  # every other file's size and SHA-256, written before the rename

# torch and safetensors are imported inside the functions that need them. The torch-free
# listing (which checkpoints are complete) belongs to the run folder: project.run.


def write_checkpoint(run_dir: Path, step: int, *, weights: dict[str, torch.Tensor],
                     optimizer: dict[str, Any] | None, rng: dict[str, Any], state: dict[str, Any],
                     ema: dict[str, torch.Tensor] | None = None, keep: int = 3,
                     metadata: dict[str, str] | None = None, notes: list[str] | None = None,
                     protect: int | None = None) -> Path:
    """Write checkpoint `step`; CheckpointError (one sentence) when the disk is full or the
    folder may not be written. What a user should know (older checkpoints removed to make
    room) is appended to `notes`. The checkpoint of step `protect` (the best by validation)
    is kept besides the newest `keep`."""
    folder = Path(run_dir) / CHECKPOINTS
    needed = estimate_bytes(run_dir, weights, ema, optimizer, rng)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ensure_space(run_dir, needed, step=step, notes=notes)
        final = _write(folder, step, weights=weights, optimizer=optimizer, rng=rng, state=state, ema=ema,
                       metadata=metadata)
    except CheckpointError:
        raise
    except Exception as exc:
        if storage.is_disk_full(exc):
            raise _no_room(folder, step, needed) from None
        if storage.is_not_writable(exc):
            where = storage.where_of(exc, folder) if isinstance(exc, OSError) else folder
            raise storage.not_writable(where, "Make the project folder writable (or copy the project to one "
                                              "you can write to), then run `train` again.",
                                       cls=CheckpointError) from None
        raise
    prune(run_dir, keep=keep, protect=protect)
    return final


def _write(folder: Path, step: int, *, weights: dict[str, torch.Tensor], optimizer: dict[str, Any] | None,
           rng: dict[str, Any], state: dict[str, Any], ema: dict[str, torch.Tensor] | None,
           metadata: dict[str, str] | None) -> Path:
    import torch
    from safetensors.torch import save_file

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
        _write_manifest(tmp)  # fsyncs every file, then itself
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
    return final


# --- room on the disk ---------------------------------------------------------------------------

def estimate_bytes(run_dir: Path, *parts: Any) -> int:
    """About how many bytes the next checkpoint takes: the previous one's size, or the byte count
    of the tensors it will hold, whichever is larger, with a little room for headers."""
    tensors = sum(_tensor_bytes(part) for part in parts)
    latest = latest_checkpoint(run_dir)
    previous = _folder_bytes(latest.path) if latest is not None else 0
    return int(max(tensors, previous) * 1.05) + 64 * 1024


def _tensor_bytes(value: Any) -> int:
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.numel()) * int(value.element_size())
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _folder_bytes(folder: Path) -> int:
    total = 0
    try:
        for path in Path(folder).iterdir():
            if path.is_file():
                total += path.stat().st_size
    except OSError:
        pass
    return total


def ensure_space(run_dir: Path, needed: int, *, step: int, notes: list[str] | None = None) -> None:
    """Make sure `needed` bytes fit beside the checkpoints. When they do not, remove leftovers of
    interrupted or damaged writes and then complete checkpoints older than the newest one, oldest
    first, until they fit; when even that would not make room, remove nothing and raise
    CheckpointError "The disk is full (needs ~N MB, M MB free)"."""
    folder = Path(run_dir) / CHECKPOINTS
    free = storage.free_bytes(folder)
    if free is None or free >= needed:
        return
    good = complete_checkpoints(run_dir)
    try:
        leftovers = [p for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-", ".damaged-"))]
    except OSError:
        leftovers = []
    spare = leftovers + [info.path for info in good[:-1]]
    if free + sum(_tree_bytes(p) for p in spare) < needed:
        raise _no_room(folder, step, needed, free)
    removed = []
    for path in spare:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
        now = storage.free_bytes(folder)
        if now is None or now >= needed:
            break
    if removed and notes is not None:
        kept = f"; {good[-1].path.name} is kept" if good else ""
        notes.append(f"The disk is nearly full ({storage.space_words(needed, free)}): removed {', '.join(removed)} "
                     f"to make room for the checkpoint at step {step}{kept}.")
    free = storage.free_bytes(folder)
    if free is not None and free < needed:
        raise _no_room(folder, step, needed, free)


def _tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _no_room(folder: Path, step: int, needed: int, free: int | None = None) -> CheckpointError:
    latest = latest_checkpoint(folder.parent)
    kept = (f"your work up to step {latest.step} is kept in {latest.path.name}" if latest is not None
            else "nothing was saved yet")
    return storage.disk_full(folder, f"the checkpoint at step {step} could not be saved in {folder}",
                             f"Free some space on that drive, then run `train` again; {kept}.",
                             needed=needed, free=free, cls=CheckpointError)


# --- verifying ----------------------------------------------------------------------------------

def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            _fsync_file(path)
            files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"version": 1, "files": files}, indent=2))
    _fsync_file(manifest)


def _manifest(checkpoint: Path) -> dict[str, dict[str, Any]] | None:
    """The files a checkpoint's manifest lists, or None without a usable manifest."""
    try:
        data = json.loads((Path(checkpoint) / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
        if isinstance(files, dict) and files and all(
                isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
                for e in files.values()):
            return files
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def problem(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, in words; None when they are whole.
    With a manifest: every file's size and SHA-256. Without (older versions): the safetensors
    headers open and the torch files load (weights only)."""
    checkpoint = Path(checkpoint)
    files = _manifest(checkpoint)
    if files is None:
        return _problem_without_manifest(checkpoint)
    for name, entry in files.items():
        path = checkpoint / name
        try:
            size = path.stat().st_size
            if size != entry["size"]:
                return f"{name} has {size:,} bytes instead of {entry['size']:,}"
            if sha256_file(path) != entry["sha256"]:
                return f"{name} is not what was written (its SHA-256 differs)"
        except OSError as exc:
            return f"{name} cannot be read: {exc.strerror or exc}"
    return None


def _problem_without_manifest(checkpoint: Path) -> str | None:
    import torch
    from safetensors import safe_open

    if not (checkpoint / WEIGHTS).is_file():
        return f"{WEIGHTS} is missing"
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged bytes reach the unpickler's internals (IndexError, struct.error…)
            return f"{path.name} cannot be read: {_reason(exc)}"
    return None


def damaged_words(info: CheckpointInfo, why: str) -> str:
    """One sentence naming a damaged checkpoint and what is wrong with it."""
    return f"The checkpoint {info.path.name} of run {info.path.parent.parent.name} is damaged ({why})"


def newest_good(checkpoints: Sequence[CheckpointInfo]) -> tuple[CheckpointInfo | None, list[tuple[CheckpointInfo, str]]]:
    """The newest checkpoint whose files are whole (None if none is), and the damaged ones newer
    than it, newest first, each with what is wrong."""
    bad: list[tuple[CheckpointInfo, str]] = []
    for info in reversed(list(checkpoints)):
        why = problem(info.path)
        if why is None:
            return info, bad
        bad.append((info, why))
    return None, bad


def set_aside(info: CheckpointInfo) -> Path | None:
    """Move a damaged checkpoint out of the way (`.damaged-step-N-…`, never used, never pruned
    unless the disk is full); None when it cannot be moved."""
    target = info.path.parent / f".damaged-{info.path.name}-{uuid.uuid4().hex[:8]}"
    try:
        info.path.rename(target)
    except OSError:
        return None
    return target


def prune(run_dir: Path, keep: int, protect: int | None = None) -> None:
    """Keep the newest `keep` complete checkpoints (and the one of step `protect`); remove
    leftovers of interrupted writes."""
    folder = Path(run_dir) / CHECKPOINTS
    good = complete_checkpoints(run_dir)
    for info in good[:-keep] if keep > 0 else []:
        if info.step != protect:
            shutil.rmtree(info.path, ignore_errors=True)
    kept = {c.path.name for c in good[-keep:]} | {c.path.name for c in good if c.step == protect}
    for path in folder.iterdir():
        if path.name.startswith((".tmp-", ".old-")) or (path.name.startswith("step-") and path.name not in kept):
            shutil.rmtree(path, ignore_errors=True)


def read_weights(checkpoint: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(Path(checkpoint) / name)
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # what safetensors raises on damage
        raise _unreadable(checkpoint, exc) from None


def read_torch(checkpoint: Path, name: str) -> Any:
    import torch

    try:
        return torch.load(Path(checkpoint) / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever damaged bytes make the weights-only unpickler raise
        raise _unreadable(checkpoint, exc) from None


def _unreadable(checkpoint: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"The checkpoint {checkpoint} cannot be read ({_reason(exc)}).",
                           "Delete that checkpoint folder; the previous one will be used.")


def _reason(exc: BaseException) -> str:
    """A short reason from a reader's exception. torch's weights-only refusal suggests loading with
    weights_only=False, the opposite of our advice: it is never quoted."""
    import pickle

    text = str(exc).strip()
    garbled = not isinstance(exc, (OSError, RuntimeError, ValueError))  # the unpickler tripped on its bytes
    if garbled or isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return "its data is not what TransferStudio writes"
    return text.splitlines()[0][:160] if text else type(exc).__name__


def split_roles(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet.a.b": t} -> {"unet": {"a.b": t}}"""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        role, _, rest = key.partition(".")
        out.setdefault(role, {})[rest] = value
    return out


def join_roles(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v for role, sd in parts.items() for k, v in sd.items()}
