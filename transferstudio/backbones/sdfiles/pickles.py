"""The one place a pickle checkpoint is ever opened: a tensors-only conversion to safetensors.

Pickles (.ckpt/.pt/.bin) can run arbitrary code when loaded. `torch.load(weights_only=True)`
uses a restricted unpickler that refuses every global except tensor types, so a malicious
file fails before anything of it runs.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

from transferstudio.core.errors import BackboneError


def _flatten(obj: object, prefix: str, out: dict) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    # Anything else (step counters, optimizer scalars, strings) is not a weight: dropped.


def convert_pickle_to_safetensors(src: str | Path, dst: str | Path) -> Path:
    """Convert a pickle checkpoint to safetensors, reading tensors only. Returns `dst`.

    Raises BackboneError when the file holds anything but plain tensors and containers.
    """
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise BackboneError(f"'{src}' does not exist.", "Check the path.")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Never quote torch's message: it advises re-running with weights_only=False, which is
        # exactly what would run the file's code. Name only what the file asked to run.
        wanted = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        what = f" (it asks to run {wanted.group(1)})" if wanted else ""
        raise BackboneError(
            f"'{src.name}' was refused: it contains code or objects other than weights{what}.",
            "Get the .safetensors version of this model from its author; do not open this file "
            "with other tools unless you trust its source.") from None
    except Exception as e:  # zip/format errors from a damaged or non-torch file
        raise BackboneError(f"'{src.name}' could not be read as a PyTorch checkpoint ({type(e).__name__}).",
                            "The file may be damaged; get it again.") from None
    # Lightning-style checkpoints nest the weights under "state_dict".
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, "", tensors)
    if not tensors:
        raise BackboneError(f"'{src.name}' holds no weights.", "Check that this is a model checkpoint.")
    # safetensors refuses tensors that share memory; give each its own contiguous copy only when needed.
    seen: set[tuple[int, int]] = set()
    for k, t in tensors.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or not t.is_contiguous() or t.numel() * t.element_size() != key[1]:
            t = t.contiguous().clone()
        else:
            seen.add(key)
        tensors[k] = t
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(tmp), metadata={"format": "pt", "converted_from": src.name})
    os.replace(tmp, dst)
    return dst
