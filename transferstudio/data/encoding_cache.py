"""Encodings kept so a frozen encoder runs once per picture (or caption), not at every step.

An `EncodingStore` holds small dicts of tensors by key: in memory (bounded, least recently used
out first) and, when given a folder, also on disk as one safetensors file per key, so later runs
on the same pictures skip the encoding. Keys name what decides the encoding (the picture's
content, bucket, crop and flip; the caption's text); the folder names the encoder, so a changed
picture or another model never meets a stale entry. Files are written atomically and a damaged
one is treated as missing (encoded again), never as an error: a cache can always be rebuilt.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import torch

MEMORY_BYTES = 1 << 30  # per store: latents of ~8000 SD pictures at 512 px, both flips


def _bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class EncodingStore:
    def __init__(self, folder: Path | None = None, *, memory_bytes: int = MEMORY_BYTES,
                 device: torch.device | str = "cpu") -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory_bytes = memory_bytes
        self.device = torch.device(device)
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._held = 0
        self.hits = self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self.folder is not None and self._file(key).is_file())

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        found = self._memory.get(key)
        if found is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return found
        found = self._read(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, found)
        return found

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: t.detach().to(self.device).contiguous() for name, t in tensors.items()}
        self._remember(key, tensors)
        if self.folder is not None:
            self._write(key, tensors)

    # --- memory ------------------------------------------------------------------------------
    def _remember(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        size = _bytes(tensors)
        if size > self.memory_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._held -= _bytes(old)
        self._memory[key] = tensors
        self._held += size
        while self._held > self.memory_bytes:
            _, dropped = self._memory.popitem(last=False)
            self._held -= _bytes(dropped)

    # --- disk --------------------------------------------------------------------------------
    def _file(self, key: str) -> Path:
        assert self.folder is not None
        safe = key if len(key) <= 120 and all(c.isalnum() or c in "-_.x" for c in key) \
            else hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return self.folder / safe[:2] / f"{safe}.safetensors"

    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            return None
        file = self._file(key)
        if not file.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded = load_file(str(file), device=str(self.device))
        except (OSError, SafetensorError, RuntimeError, ValueError):
            return None  # damaged (e.g. the disk filled up mid-write elsewhere): encode again
        return loaded

    def _write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        file = self._file(key)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            save_file({name: t.cpu() for name, t in tensors.items()}, str(temporary))
            os.replace(temporary, file)
        except OSError:
            pass  # a full or read-only disk costs speed next time, never the run


def caption_key(caption: str) -> str:
    return hashlib.blake2b(caption.encode("utf-8"), digest_size=12).hexdigest()
