"""Finding and verifying model files before they are loaded.

A ModelVariant names its artifact by URI and SHA-256. In a pod the catalog's ``file:///models/``
files are mounted (or baked into the image); elsewhere ``KUBEVISION_MODEL_DIR`` (or
``--model-dir``) points at a folder holding them. A file whose checksum differs is never loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from kubevision.api.modelvariant import Artifact

DEFAULT_MODEL_DIR = Path("/models")


class ArtifactError(Exception):
    """The model file is missing, unsupported or corrupt; the message says which."""


def model_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    dirs = list(extra)
    if os.environ.get("KUBEVISION_MODEL_DIR"):
        dirs.extend(Path(p) for p in os.environ["KUBEVISION_MODEL_DIR"].split(os.pathsep))
    dirs.append(DEFAULT_MODEL_DIR)
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_artifact(artifact: Artifact, search: Iterable[Path] = ()) -> Path:
    """The local file for ``artifact``, its checksum verified."""
    parts = urlsplit(artifact.uri)
    if parts.scheme != "file":
        raise ArtifactError(
            f"{artifact.uri}: only file:// artifacts are loaded by this worker (mount or bake "
            f"the model into the image and point the ModelVariant at file:///models/...)"
        )
    path = Path(parts.path)
    candidates = [path, *(d / path.name for d in model_dirs(search))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        tried = ", ".join(str(p) for p in candidates)
        raise ArtifactError(f"{artifact.uri}: no such file (tried {tried})")
    if artifact.sha256 and sha256_of(found) != artifact.sha256:
        raise ArtifactError(f"{found}: SHA-256 does not match the ModelVariant's artifact.sha256")
    return found
