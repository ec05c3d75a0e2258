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

from transferstudio.backbones.sdfiles.detect import FAMILY_LABELS, PICKLE_SUFFIXES, detect

MODEL_SUFFIXES = {".safetensors"} | PICKLE_SUFFIXES - {".bin", ".pkl", ".pickle"}
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": None,  # sd1 or sd2: decided by the UNet's cross-attention width
    "StableDiffusionXLPipeline": "sdxl",
    "DDPMPipeline": "ddpm",
    "DDIMPipeline": "ddpm",
}
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


def _component_weights_problem(folder: Path, component: str) -> str | None:
    sub = folder / component
    if not sub.is_dir():
        return f"The '{component}' folder is missing."
    names = {p.name for p in sub.iterdir()}
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return None
    if any(n.endswith((".bin", ".ckpt", ".pt")) for n in names):
        return (f"The '{component}' weights are pickle files (.bin), which TransferStudio does not open; "
                "convert them to .safetensors first.")
    return f"The '{component}' folder holds no weights."


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / "model_index.json").is_file():
        return True
    cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    return bool(cfg and cfg.get("_class_name") == "UNet2DModel")


def describe_diffusers_folder(folder: Path, *, kind: str = "diffusers-folder", source: str = "folder",
                              name: str | None = None) -> LibraryEntry:
    """Build an entry from `model_index.json` (a pipeline) or a bare UNet2DModel `config.json`."""
    name = name or folder.name
    problems: list[str] = []
    family: str | None = None
    resolution: int | None = None
    prediction: str | None = None
    index = _read_json(folder / "model_index.json")
    if index is not None:
        cls = str(index.get("_class_name", ""))
        if cls not in PIPELINE_FAMILIES:
            problems.append(f"This is a {cls or 'unknown'} model, which TransferStudio cannot fine-tune.")
        family = PIPELINE_FAMILIES.get(cls)
        components = [k for k, v in index.items()
                      if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None
                      and k in {"unet", "vae", "text_encoder", "text_encoder_2"}]
        unet_cfg = _read_json(folder / "unet" / "config.json") or {}
        if cls == "StableDiffusionPipeline":
            width = unet_cfg.get("cross_attention_dim")
            family = {768: "sd1", 1024: "sd2"}.get(width)
            if family is None:
                problems.append(f"Its UNet has an unexpected text width ({width}).")
        sched = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
        prediction = sched.get("prediction_type", "epsilon")
        sample = unet_cfg.get("sample_size")
        if isinstance(sample, list):
            sample = sample[0]
        if isinstance(sample, int):
            resolution = sample * 8 if family in {"sd1", "sd2", "sdxl"} else sample
        for comp in components:
            problem = _component_weights_problem(folder, comp)
            if problem:
                problems.append(problem)
        if unet_cfg.get("in_channels", 4) == 9:
            problems.append("This is an inpainting model, which TransferStudio cannot fine-tune as an image "
                            "generator.")
    else:
        cfg = _read_json(folder / "config.json") or {}
        family = "ddpm"
        sample = cfg.get("sample_size")
        resolution = sample[0] if isinstance(sample, list) else sample
        prediction = "epsilon"
        names = {p.name for p in folder.iterdir()}
        if not any(n.endswith(".safetensors") for n in names):
            problems.append("The folder holds a UNet config but no .safetensors weights.")
    label = FAMILY_LABELS.get(family or "", "Unknown model") + " (diffusers folder)"
    return LibraryEntry(folder, name, kind, family, label, resolution, _folder_size(folder),
                        usable=not problems and family is not None, problems=tuple(problems),
                        prediction_type=prediction, source=source)


def describe_single_file(path: Path, *, source: str = "folder") -> LibraryEntry:
    d = detect(path)
    return LibraryEntry(path, path.stem, "single-file", d.family, d.label, d.native_resolution,
                        d.size_bytes or (path.stat().st_size if path.is_file() else 0), d.usable,
                        d.problems, d.advice, d.prediction_type, source)


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

    if starter is not None and Path(starter).exists():
        s = Path(starter)
        if s.is_dir():
            entry = describe_diffusers_folder(s, kind="starter", source="starter", name="Starter model")
            entry.label = "Starter model (" + entry.label.replace(" (diffusers folder)", "") + ")"
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
    """Human description of a model file or folder, for `transferstudio inspect FILE`."""
    path = Path(path)
    if path.is_dir():
        if not is_diffusers_folder(path):
            return (f"{path}\n  Not a model folder: no model_index.json (diffusers pipeline) and no "
                    "UNet2DModel config.json.")
        entry = describe_diffusers_folder(path)
        lines = [str(path), f"  What:        {entry.label}"]
        if entry.native_resolution:
            lines.append(f"  Resolution:  {entry.native_resolution} px")
        if entry.prediction_type:
            lines.append(f"  Predicts:    {entry.prediction_type}")
        lines.append(f"  Size:        {_human_size(entry.size_bytes)}")
        lines += _verdict(entry.usable, entry.problems, entry.advice)
        return "\n".join(lines)
    d = detect(path)
    lines = [str(path), f"  What:        {d.label}" + (f" ({d.kind})" if d.kind != "checkpoint" else "")]
    if d.family:
        lines.append(f"  Family:      {FAMILY_LABELS.get(d.family, d.family)}")
    if d.native_resolution:
        lines.append(f"  Resolution:  {d.native_resolution} px")
    if d.prediction_type:
        lines.append(f"  Predicts:    {d.prediction_type}")
    if d.components:
        lines.append(f"  Contains:    {', '.join(d.components)}")
    if d.dtype:
        lines.append(f"  Precision:   {d.dtype}")
    lines.append(f"  Size:        {_human_size(d.size_bytes or (path.stat().st_size if path.is_file() else 0))}")
    lines += _verdict(d.usable, d.problems, d.advice)
    return "\n".join(lines)


def _verdict(usable: bool, problems: Sequence[str], advice: str) -> list[str]:
    out = ["  Usable:      yes" if usable else "  Usable:      no"]
    out += [f"  Problem:     {p}" for p in problems]
    if advice:
        out.append(f"  Advice:      {advice}")
    return out


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"
