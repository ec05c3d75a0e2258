"""Preview samples: which prompts to use, and saving them as PNGs plus a grid per step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from transferstudio.project.config import TrainConfig
from transferstudio.project.prompt_options import parse_prompt

PREVIEWS = "previews"


def preview_prompts(config: TrainConfig, captions: Sequence[str], conditioning: str) -> list[str] | None:
    """Fixed prompt lines (options included), one per preview: one per seed, or one per prompt
    when the list is longer. None for unconditional models."""
    if conditioning != "text":
        return None
    prompts = [p for p in config.preview_prompts if p.strip()]
    count = max(len(config.preview_seeds), len(prompts))
    if not prompts:
        prompts = [c for c in dict.fromkeys(captions) if c.strip()][: len(config.preview_seeds)]
    if not prompts:
        prompts = [config.trigger or "a picture"]
    if config.trigger:
        prompts = [p if config.trigger in parse_prompt(p).text else f"{config.trigger}, {p}" for p in prompts]
    return [prompts[i % len(prompts)] for i in range(count)]


@dataclass(frozen=True)
class PreviewSlot:
    prompt: str
    seed: int
    steps: int
    guidance: float | None  # None: the family's default
    negative: str
    size: tuple[int, int] | None  # (width, height); None: the run's preview size


def preview_slots(lines: Sequence[str], seeds: Sequence[int], steps: int,
                  size: tuple[int, int] | None) -> list[PreviewSlot]:
    """Each preview's prompt and settings: a line's own options over the run's (seed i cycles
    through the preview seeds)."""
    slots = []
    for i, line in enumerate(lines):
        parsed = parse_prompt(line)
        own_size = (parsed.width or (size or (0, 0))[0] or parsed.height,
                    parsed.height or (size or (0, 0))[1] or parsed.width) \
            if parsed.width or parsed.height else size
        slots.append(PreviewSlot(prompt=parsed.text, seed=parsed.seed if parsed.seed is not None else seeds[i % len(seeds)],
                                 steps=parsed.steps or steps, guidance=parsed.guidance,
                                 negative=parsed.negative or "", size=own_size))
    return slots


def draw_previews(sample: Any, slots: Sequence[PreviewSlot]) -> list[Any]:
    """Pictures for the slots, in order: one `sample` call per group of slots sharing steps,
    guidance, negative prompt and size (a picture depends only on its own seed and prompt)."""
    groups: dict[tuple, list[int]] = {}
    for i, slot in enumerate(slots):
        groups.setdefault((slot.steps, slot.guidance, slot.negative, slot.size), []).append(i)
    pictures: list[Any] = [None] * len(slots)
    for (steps, guidance, negative, size), members in groups.items():
        extra: dict[str, Any] = {"negative_prompt": negative} if negative else {}
        if guidance is not None:
            extra["guidance"] = guidance
        drawn = sample(seeds=[slots[i].seed for i in members], prompts=[slots[i].prompt for i in members],
                       steps=steps, size=size, **extra)
        for i, picture in zip(members, drawn):
            pictures[i] = picture
    return pictures


def save_previews(run_dir: Path, step: int, images: Sequence[Any], seeds: Sequence[int],
                  prompts: Sequence[str] | None) -> list[Path]:
    folder = Path(run_dir) / PREVIEWS / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    used: set[str] = set()
    for image, seed in zip(images, seeds):
        name, n = f"seed-{seed}", 2
        while name in used:  # two prompts with one seed: both kept
            name, n = f"seed-{seed}-{n}", n + 1
        used.add(name)
        path = folder / f"{name}.png"
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
