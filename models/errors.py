"""Errors raised by the ``models`` package.

    ModelError                 root of this package's errors (edge_agent.errors.ModelError,
    |                          under the project root MammoError)
    +-- InputImageError        the pixels are not a usable mammogram
    +-- ReleaseError           a release folder is missing, incomplete or altered
    +-- RuntimeUnavailable     the requested inference runtime is not installed
    +-- DatasetError           an evaluation/training folder has the wrong shape

Every message says what to do next.
"""

from __future__ import annotations

from edge_agent.errors import ModelError  # the project's root tree: MammoError -> ModelError


class InputImageError(ModelError, ValueError):
    """The image cannot be preprocessed (wrong shape, empty)."""


class ReleaseError(ModelError):
    """A model release is missing, incomplete or does not match its manifest."""


class RuntimeUnavailable(ModelError):
    """The inference runtime asked for (onnxruntime, ai-edge-litert) is absent."""


class DatasetError(ModelError):
    """An image folder does not have the images/ + images.csv layout expected."""
