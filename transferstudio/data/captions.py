"""Caption variation during training, as kohya_ss users know it: caption dropout (some samples
train with an empty caption, so the model also learns the look without words), tag shuffling
(comma-separated tags in a new order each time, the first few kept in place — the trigger word
is the first), and tag dropout (each tag left out now and then).

Every draw comes from the run's data generator, so a resumed run varies its captions exactly as
an uninterrupted one; with everything off nothing is drawn and captions pass through unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CaptionVariation:
    dropout: float = 0.0  # probability that a sample's caption is empty
    shuffle: bool = False  # shuffle the tags after the first `keep`
    keep: int = 1  # leading tags that stay in place (and are never dropped)
    tag_dropout: float = 0.0  # probability that each other tag is left out

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.shuffle or self.tag_dropout > 0

    def possible(self, caption: str) -> list[str] | None:
        """Every caption `apply` can make of `caption`, or None when there are too many to list
        (shuffled or dropped tags): what a text cache must hold to never need the encoders again."""
        if not self.active:
            return [caption]
        tags = [t.strip() for t in caption.split(",") if t.strip()]
        if self.shuffle and len(tags) - max(0, self.keep) > 1:
            return None
        if self.tag_dropout > 0 and len(tags) > max(0, self.keep):
            return None
        return [", ".join(tags)] + ([""] if self.dropout > 0 else [])

    def apply(self, caption: str, rng: torch.Generator) -> str:
        if not self.active:
            return caption
        if self.dropout > 0 and float(torch.rand((), generator=rng)) < self.dropout:
            return ""
        tags = [t.strip() for t in caption.split(",") if t.strip()]
        kept, rest = tags[:max(0, self.keep)], tags[max(0, self.keep):]
        if self.tag_dropout > 0 and rest:
            drawn = torch.rand(len(rest), generator=rng)
            rest = [t for t, r in zip(rest, drawn.tolist()) if r >= self.tag_dropout]
        if self.shuffle and len(rest) > 1:
            rest = [rest[i] for i in torch.randperm(len(rest), generator=rng).tolist()]
        return ", ".join(kept + rest)
