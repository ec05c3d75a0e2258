"""Prior preservation (DreamBooth): pictures of the general class, made once by the untouched
base model and trained on beside the user's pictures, so the model keeps what it knew about the
class while it learns the user's subject or style.

They live in the project (`.class-pictures/<key>/`, one PNG and one caption .txt each, and a
`COMPLETE` marker written last), keyed by what made them: the base model file (path, size, time),
the class prompt, the count, the size, the seed and the sampling steps. A changed base or setting
makes a new set; the stale sets of the same base are removed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from transferstudio.core.atomic import write_json_atomic

CLASS_FOLDER = ".class-pictures"
MARKER = "COMPLETE"
BATCH = 4  # pictures sampled at once


def _fingerprint(path: Path) -> dict[str, Any]:
    """Size and modification time of a model file, or of every file of a model folder."""
    path = Path(path).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, int(p.stat().st_mtime))
             for p in files]
    return {"path": str(path), "files": stats}


def class_key(backbone_path: Path, config: Any, resolution: int) -> dict[str, Any]:
    return {"base": _fingerprint(backbone_path), "prompt": config.class_prompt.strip(),
            "count": int(config.class_pictures), "resolution": int(resolution), "seed": int(config.seed),
            "steps": int(config.preview_steps)}


def class_folder(project_folder: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(project_folder) / CLASS_FOLDER / digest


def ready(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def make_class_pictures(folder: Path, key: dict[str, Any], sample: Callable[..., list[Any]],
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sample `key["count"]` class pictures with `sample(seeds=, prompts=, steps=, size=)` (the
    base model's own sampler) into `folder`, written whole or not at all."""
    folder = Path(folder)
    stage = folder.with_name(folder.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    count, prompt, size = key["count"], key["prompt"], key["resolution"]
    for start in range(0, count, BATCH):
        seeds = [key["seed"] * 100_003 + i for i in range(start, min(count, start + BATCH))]
        pictures = sample(seeds=seeds, prompts=[prompt] * len(seeds) if prompt else None, steps=key["steps"],
                          size=(size, size))
        for index, picture in zip(range(start, start + len(seeds)), pictures):
            picture.save(stage / f"class_{index:05d}.png")
            if prompt:
                (stage / f"class_{index:05d}.txt").write_text(prompt + "\n", encoding="utf-8")
        if progress is not None:
            progress(min(count, start + BATCH), count)
    write_json_atomic(stage / MARKER, key)
    shutil.rmtree(folder, ignore_errors=True)
    stage.rename(folder)
    _remove_stale(folder, key)
    return folder


def _remove_stale(keep: Path, key: dict[str, Any]) -> None:
    """Older sets made from the same base model file (settings or the model changed since)."""
    for other in keep.parent.iterdir():
        if other == keep or not other.is_dir():
            continue
        try:
            made = json.loads((other / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            made = None
        if made is None or made.get("base", {}).get("path") == key["base"]["path"]:
            shutil.rmtree(other, ignore_errors=True)
