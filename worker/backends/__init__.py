"""Inference runtimes behind one protocol (see :mod:`.base`)."""

from kubevision.worker.backends.base import InferenceBackend, create_backend

__all__ = ["InferenceBackend", "create_backend"]
