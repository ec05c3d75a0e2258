"""Find the models an artist already has: own folders, A1111/Forge, ComfyUI, the HF cache.

Reads safetensors headers and small JSON configs only, so scanning a disk full of multi-GB
checkpoints takes milliseconds per file. Content hashes are computed lazily and cached.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from transferstudio.backbones.sdfiles.detect import PICKLE_SUFFIXES

MODEL_SUFFIXES = {".safetensors"} | PICKLE_SUFFIXES - {".bin", ".pkl", ".pickle"}
_MAX_DEPTH = 6  # user folders: deep enough for "models/<artist>/<version>/", bounded for a home folder
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass
class LibraryEntry:
    path: Path
    name: str
    kind: str  # diffusers-folder | single-file | starter
    family: str | None
    label: str
    native_resolution: int | None
    size_bytes: int
    usable: bool
    problems: tuple[str, ...] = ()
    advice: str = ""
    prediction_type: str | None = None
    source: str = "folder"  # folder | a1111 | comfyui | hf-cache | starter
    cache_dir: Path | None = field(default=None, repr=False, compare=False)
    _hash: str | None = field(default=None, repr=False, compare=False)

    def content_hash(self, cache_dir: Path | None = None) -> str:
        """SHA-256 of the model's bytes (for a folder: of its files' names and hashes)."""
        if self._hash is None:
            cache = _HashCache(cache_dir or self.cache_dir)
            if self.path.is_dir():
                h = hashlib.sha256()
                for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
                    rel = f.relative_to(self.path).as_posix()
                    h.update(f"{rel}\0{cache.file_hash(f)}\n".encode())
                self._hash = h.hexdigest()
            else:
                self._hash = cache.file_hash(self.path)
            cache.save()
        return self._hash


class _HashCache:
    """path+size+mtime -> sha256, in one small JSON file, so a 7 GB file is hashed once."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.file = Path(cache_dir) / "content-hashes.json" if cache_dir else None
        self.data: dict[str, str] = {}
        self.dirty = False
        if self.file and self.file.is_file():
            try:
                loaded = json.loads(self.file.read_text("utf-8"))
                if isinstance(loaded, dict):
                    self.data = {str(k): str(v) for k, v in loaded.items()}
            except (OSError, ValueError):
                self.data = {}  # a damaged cache only costs re-hashing

    def file_hash(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.data:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
            self.data[key] = h.hexdigest()
            self.dirty = True
        return self.data[key]

    def save(self) -> None:
        if not (self.file and self.dirty):
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True), "utf-8")
        os.replace(tmp, self.file)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _folder_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size  # follows HF-cache symlinks to their blobs
        except OSError:
            pass
    return total


# Folders that are one model as a whole (the walk lists them and does not look inside): a bare
# UNet, a VAE, a TransferStudio GAN (generator + discriminator files in one folder).
MODEL_FOLDER_CLASSES = ("UNet2DModel", "AutoencoderKL", "TransferStudioGAN")


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / "model_index.json").is_file():
        return True
    cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    return bool(cfg and cfg.get("_class_name") in MODEL_FOLDER_CLASSES)


def describe(path: Path, *, kind: str, source: str = "folder", name: str | None = None) -> LibraryEntry:
    """A library entry from the one recogniser every part of the app uses: the backbone
    registry's inspection (the same answer `transferstudio inspect` and the model panel give)."""
    from transferstudio.backbones.registry import inspect_backbone

    found = inspect_backbone(path)
    size = found.size_bytes or (_folder_size(path) if path.is_dir() else path.stat().st_size)
    if path.is_dir():
        size = max(size, _folder_size(path))  # follows HF-cache symlinks to their blobs
    return LibraryEntry(path, name or (path.name if path.is_dir() else path.stem), kind,
                        found.variant or found.family, found.label, found.native_resolution, size,
                        usable=found.usable, problems=found.problems,
                        advice=found.advice or dict(found.details).get("advice", ""),
                        prediction_type=found.prediction_type, source=source)


def describe_diffusers_folder(folder: Path, *, kind: str = "diffusers-folder", source: str = "folder",
                              name: str | None = None) -> LibraryEntry:
    return describe(folder, kind=kind, source=source, name=name)


def describe_single_file(path: Path, *, source: str = "folder") -> LibraryEntry:
    return describe(path, kind="single-file", source=source)


def _walk(root: Path, max_depth: int) -> Iterable[Path]:
    """Yield diffusers folders and model files under root, not descending into diffusers folders."""
    if not root.is_dir():
        return
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if is_diffusers_folder(folder):
            yield folder
            continue
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            try:
                if child.is_dir():
                    if depth < max_depth:
                        stack.append((child, depth + 1))
                elif child.suffix.lower() in MODEL_SUFFIXES:
                    yield child
            except OSError:
                continue


def _hf_hub_dir(hf_cache: Path) -> Path:
    # Accept either HF_HOME (~/.cache/huggingface) or its hub/ folder.
    return hf_cache / "hub" if (hf_cache / "hub").is_dir() else hf_cache


def _hf_entries(hf_cache: Path) -> Iterable[LibraryEntry]:
    hub = _hf_hub_dir(hf_cache)
    if not hub.is_dir():
        return
    for repo in sorted(hub.glob("models--*")):
        snapshots = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
        repo_name = repo.name[len("models--"):].replace("--", "/")
        for snap in snapshots:
            if not (snap / "model_index.json").is_file():
                continue  # single components, LLMs, ...: not a pipeline we can train
            name = repo_name if len(snapshots) == 1 else f"{repo_name} ({snap.name[:8]})"
            yield describe_diffusers_folder(snap, source="hf-cache", name=name)


def discover(roots: Sequence[Path] = (), *, a1111: Path | None = None, comfyui: Path | None = None,
             hf_cache: Path | None = None, starter: Path | None = None,
             starters: Sequence[tuple[str, Path]] = (),
             cache_dir: Path | None = None) -> list[LibraryEntry]:
    """List every model found. Unusable ones are included with their problems, so the UI can explain."""
    entries: list[LibraryEntry] = []
    seen: set[Path] = set()

    def add(entry: LibraryEntry) -> None:
        key = entry.path.resolve()
        if key in seen:
            return
        seen.add(key)
        entry.cache_dir = cache_dir
        entries.append(entry)

    def scan(root: Path, source: str, depth: int) -> None:
        for found in _walk(root, depth):
            if found.is_dir():
                add(describe_diffusers_folder(found, source=source))
            else:
                add(describe_single_file(found, source=source))

    for title, path in ([("Starter model", Path(starter))] if starter is not None else []) + list(starters):
        s = Path(path)
        if not s.exists():
            continue
        if s.is_dir():
            entry = describe_diffusers_folder(s, kind="starter", source="starter", name=title)
            entry.label = f"{title} (" + entry.label.replace(" (diffusers folder)", "") + ")"
        else:
            entry = describe_single_file(s, source="starter")
            entry.kind = "starter"
        add(entry)
    if a1111 is not None:
        a = Path(a1111)
        # Accept the webui root or its models/Stable-diffusion folder itself.
        scan(a / "models" / "Stable-diffusion" if (a / "models").is_dir() else a, "a1111", 3)
    if comfyui is not None:
        c = Path(comfyui)
        models = c / "models" if (c / "models").is_dir() else c
        scan(models / "checkpoints", "comfyui", 3)
        scan(models / "diffusers", "comfyui", 2)
    if hf_cache is not None:
        for entry in _hf_entries(Path(hf_cache)):
            add(entry)
    for root in roots:
        root = Path(root)
        if root.is_file():
            add(describe_single_file(root))
        else:
            scan(root, "folder", _MAX_DEPTH)
    return entries


def describe_file(path: str | Path) -> str:
    """Human description of a model file or folder, for `transferstudio inspect`."""
    from transferstudio.backbones.registry import inspect_backbone

    path = Path(path)
    if path.is_dir() and not is_diffusers_folder(path):
        return (f"{path}\n  Not a model folder: no model_index.json (diffusers pipeline) and no "
                "UNet2DModel config.json.")
    return inspect_backbone(path).describe()
