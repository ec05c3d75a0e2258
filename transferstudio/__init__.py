"""TransferStudio: teach a pretrained image generator your own pictures."""
__version__ = "0.1.0"
