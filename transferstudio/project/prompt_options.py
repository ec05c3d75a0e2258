"""Preview prompts with their own settings, written as kohya's sample-prompt lines:

    a watercolour cat --n blurry, low quality --d 42 --s 20 --l 6.5 --w 512 --h 768

--n negative prompt, --d seed, --s denoising steps, --l guidance scale, --w/--h size in pixels.
A line without options is just a prompt. The same lines work in a prompts file (one per line,
`#` starts a comment), so a kohya_ss sample-prompts file can be used as it is.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

_OPTION = re.compile(r"\s--([A-Za-z])(?=\s|$)")
_NAMES = {"n": "negative prompt", "d": "seed", "s": "steps", "l": "guidance", "w": "width", "h": "height"}


@dataclass(frozen=True)
class PromptLine:
    text: str
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None

    @property
    def has_options(self) -> bool:
        return any(v is not None for v in (self.negative, self.seed, self.steps, self.guidance, self.width,
                                           self.height))


def _whole(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--{name} wants a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"--{name} {number} is outside {low}…{high}")
    return number


def parse_prompt(line: str) -> PromptLine:
    """A prompt line read; ValueError saying what is wrong with an option."""
    parts = _OPTION.split(" " + line)
    text = parts[0].strip()
    found: dict[str, str] = {}
    for key, value in zip(parts[1::2], parts[2::2]):
        key = key.lower()
        if key not in _NAMES:
            raise ValueError(f"--{key} is not a prompt option (use --n, --d, --s, --l, --w, --h)")
        found[key] = value.strip()
    guidance = None
    if "l" in found:
        try:
            guidance = float(found["l"])
        except ValueError:
            raise ValueError(f"--l wants a number, not {found['l']!r}") from None
        if not math.isfinite(guidance) or not 0 <= guidance <= 50:
            raise ValueError(f"--l {found['l']} is outside 0…50")
    return PromptLine(
        text=text, negative=found.get("n"),
        seed=_whole("d", found["d"], 0, 2**32 - 1) if "d" in found else None,
        steps=_whole("s", found["s"], 1, 1000) if "s" in found else None, guidance=guidance,
        width=_whole("w", found["w"], 8, 4096) if "w" in found else None,
        height=_whole("h", found["h"], 8, 4096) if "h" in found else None)


def prompt_problems(lines: list[str]) -> list[str]:
    out = []
    for number, line in enumerate(lines, 1):
        try:
            parse_prompt(line)
        except ValueError as exc:
            out.append(f"preview_prompts: line {number}: {exc}")
    return out


def read_prompt_file(path: Path) -> list[str]:
    """The prompt lines of a file (kohya's sample-prompts format), comments and blanks left out."""
    text = Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
