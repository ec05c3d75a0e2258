"""The one offline switch. `transferstudio/__init__.py` imports this module first, so every
entry point (app, CLI, self-check, a worker, a test) sets it before anything can import
huggingface_hub, diffusers or transformers: no code path may reach a hub."""
from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub reads it once, when first imported
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
}


def go_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


go_offline()
