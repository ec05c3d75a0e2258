"""Errors a user can act on. Each carries a one-line message and advice.

Programming errors stay ordinary exceptions; only these become `Failed` events
and one-line CLI exits.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input, wrong model, not enough memory."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.advice = advice

    def __str__(self) -> str:
        return self.message if not self.advice else f"{self.message} {self.advice}"


class DatasetError(UserError):
    """The image folder cannot be used (missing, empty, nothing readable)."""


class BackboneError(UserError):
    """The model path is not a usable backbone, or is missing parts."""


class ProjectError(UserError):
    """The project file is missing, malformed or from an unknown version."""


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not match the project."""


class ExportError(UserError):
    """An export could not be written."""
