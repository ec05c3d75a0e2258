"""Which encoding caches a run uses (the `cache` setting), and where they live.

Latents: a frozen VAE gives the same distribution for the same picture, bucket, crop and flip,
so it is encoded once (before the first step, both flips) and each step draws its latent from
the kept (mean, std) — the same draw, from the same random numbers, as encoding afresh. Text
features: frozen text encoders give the same output for the same caption, kept per caption
(caption variation just makes more of them). Disk caches live in the project's `.cache` folder
under the encoder's fingerprint, so a changed model or picture never meets a stale entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transferstudio.core.events import Message
from transferstudio.data.encoding_cache import EncodingStore

CACHE_FOLDER = ".cache"


def latent_cache_folder(project_folder: Path, fingerprint: str) -> Path:
    return Path(project_folder) / CACHE_FOLDER / "latents" / fingerprint


def use_encoding_caches(objective: Any, backbone: Any, config: Any, project_folder: Path) -> list[Message]:
    """Hand the run's caches to its objective; what the user should know about them."""
    choice = str(getattr(config, "cache", "auto") or "auto")
    caps = backbone.caps
    if choice == "off" or not caps.latent:
        objective.use_caches(None, None)  # pixel models have nothing to encode
        return []
    notes: list[Message] = []
    device = getattr(backbone, "device", "cpu")
    latents = None
    if config.crop == "random":
        notes.append(Message("The pictures are encoded at every step, not cached: with random crop each step "
                             "cuts a new piece. Choose centre crop to cache them (faster).", "info"))
    else:
        folder = latent_cache_folder(project_folder, backbone.encoder_fingerprint()) if choice == "disk" else None
        latents = EncodingStore(folder, device=device)
    texts = None
    if caps.conditioning == "text" and not config.train_text_encoder:
        texts = EncodingStore(device=device)
    if not objective.use_caches(latents, texts):
        return []
    return notes
