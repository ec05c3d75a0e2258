"""Preview samples: which prompts to use, and saving them as PNGs plus a grid per step."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from transferstudio.project.config import TrainConfig

PREVIEWS = "previews"


def preview_prompts(config: TrainConfig, captions: Sequence[str], conditioning: str) -> list[str] | None:
    """Fixed prompts, one per preview seed. None for unconditional models."""
    if conditioning != "text":
        return None
    prompts = [p for p in config.preview_prompts if p.strip()]
    if not prompts:
        prompts = [c for c in dict.fromkeys(captions) if c.strip()][: len(config.preview_seeds)]
    if not prompts:
        prompts = [config.trigger or "a picture"]
    if config.trigger:
        prompts = [p if config.trigger in p else f"{config.trigger}, {p}" for p in prompts]
    return [prompts[i % len(prompts)] for i in range(len(config.preview_seeds))]


def save_previews(run_dir: Path, step: int, images: Sequence[Any], seeds: Sequence[int],
                  prompts: Sequence[str] | None) -> list[Path]:
    folder = Path(run_dir) / PREVIEWS / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, seed in zip(images, seeds):
        path = folder / f"seed-{seed}.png"
        image.save(path)
        paths.append(path)
    grid(images).save(folder / "grid.png")
    if prompts:
        (folder / "prompts.txt").write_text("\n".join(f"{s}\t{p}" for s, p in zip(seeds, prompts)) + "\n",
                                            encoding="utf-8")
    return paths


def grid(images: Sequence[Any], cols: int | None = None, pad: int = 2) -> Any:
    from PIL import Image

    images = list(images)
    cols = cols or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    out = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (24, 24, 24))
    for n, image in enumerate(images):
        r, c = divmod(n, cols)
        out.paste(image.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return out


def preview_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / PREVIEWS
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name.startswith("step-"))
