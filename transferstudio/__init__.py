"""TransferStudio: teach a pretrained image generator your own pictures."""
from transferstudio.core import offline as _offline  # noqa: F401  (first: no code path reaches a hub)

__version__ = "0.1.0"
