"""Fetching a ModelVariant's artifact, verifying its SHA-256 and caching it on the node.

A variant names its artifact by URI and SHA-256 (``spec.artifact``); nothing is loaded before
its checksum matches:

- ``file://`` — a file in the image, on a mounted volume (a PersistentVolumeClaim, a hostPath:
  the chart's ``workers.models`` mounts one read-only at ``/models``) or, by file name, in
  ``KUBEVISION_MODEL_DIR`` / ``--model-dir`` / ``/models``; verified where it lies, never
  copied (an archive on a read-only volume is unpacked into the cache);
- ``http://``, ``https://`` — downloaded with httpx (redirects followed, connection retries);
- ``s3://bucket/key`` — any S3-compatible store through the MinIO client: endpoint from the
  artifact's ``endpoint``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (default AWS);
  credentials from the env vars the ModelVariant's ``credentialsSecretRef`` fills (their
  names are in the worker config), else ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (``AWS_SESSION_TOKEN``), MinIO's env vars or the pod's IAM role (IRSA web identity, instance
  metadata).

Downloads are hashed while they stream into a temporary file of the cache and renamed into
``<cache>/sha256/<digest>/<file name>`` only when the digest matches, so a cache entry is
always complete, and concurrent workers of a node (several pods per GPU) never see half a
file. A cached entry is verified again before every load. An artifact that is an uncompressed
``.tar`` (an OpenVINO IR: ``model.xml`` + ``model.bin``) is unpacked beside itself after
verification and the model file inside is returned.

Failures raise :class:`ArtifactError` with a ``reason`` (for conditions and metric labels) and
a message that names the URI without credentials.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal
from urllib.parse import urlsplit, urlunsplit

from kubevision.api.modelvariant import Artifact
from kubevision.api.worker_config import CredentialEnv

if TYPE_CHECKING:
    import urllib3
    from minio import Minio

log = logging.getLogger("kubevision.worker.artifacts")

DEFAULT_MODEL_DIR = Path("/models")
CACHE_ENV = "KUBEVISION_ARTIFACT_CACHE"
ENGINE_CACHE_ENV = "KUBEVISION_ENGINE_CACHE"
MODEL_DIR_ENV = "KUBEVISION_MODEL_DIR"
_CHUNK = 1 << 20
_HTTP_TIMEOUT_SECONDS = 60.0
_HTTP_RETRIES = 3
MODEL_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")
"""Model files an unpacked archive may hold (the one returned for loading)."""

Reason = Literal["ArtifactMissing", "ChecksumMismatch", "FetchFailed", "UnsupportedArtifact"]
MISSING: Reason = "ArtifactMissing"
MISMATCH: Reason = "ChecksumMismatch"
FETCH_FAILED: Reason = "FetchFailed"
UNSUPPORTED: Reason = "UnsupportedArtifact"


class ArtifactError(Exception):
    """The model file is missing, unreachable, unsupported or corrupt; ``reason`` says which."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def model_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    dirs = list(extra)
    if os.environ.get(MODEL_DIR_ENV):
        dirs.extend(Path(p) for p in os.environ[MODEL_DIR_ENV].split(os.pathsep))
    dirs.append(DEFAULT_MODEL_DIR)
    return dirs


def default_cache_dir() -> Path:
    """``$KUBEVISION_ARTIFACT_CACHE`` (a node folder shared by the node's pods of every class
    when the chart sets ``artifactCacheHostPath``); else ``artifacts/`` in the engine cache (a
    node folder when the chart sets ``engineCacheHostPath``); else ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)/kubevision/artifacts."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get(ENGINE_CACHE_ENV):
        return Path(os.environ[ENGINE_CACHE_ENV]) / "artifacts"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubevision" / "artifacts"


def resolve_artifact(
    artifact: Artifact, search: Iterable[Path] = (), credentials: CredentialEnv | None = None
) -> Path:
    """The verified local file for ``artifact``, cached in the default cache."""
    return ArtifactStore(search=search).fetch(artifact, credentials)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def redact(uri: str) -> str:
    """The URI without user info or query string (presigned URLs carry signatures there)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ArtifactStore:
    """Finds, downloads, verifies and caches artifacts (see the module docstring)."""

    def __init__(self, cache_dir: Path | None = None, search: Iterable[Path] = ()) -> None:
        self._cache = cache_dir or default_cache_dir()
        self._search = tuple(search)

    def fetch(self, artifact: Artifact, credentials: CredentialEnv | None = None) -> Path:
        """The verified local model file for ``artifact`` (``credentials``: env var names of
        its store's keys)."""
        scheme = urlsplit(artifact.uri).scheme
        if scheme == "file":
            path = self._local(artifact)
        elif scheme in ("http", "https", "s3"):
            path = self._cached(artifact, credentials)
        else:
            raise ArtifactError(
                UNSUPPORTED,
                f"{redact(artifact.uri)}: {scheme}:// artifacts are not fetched by workers "
                f"(use file://, http(s):// or s3://)",
            )
        if path.suffix != ".tar":
            return path
        if scheme == "file" and not os.access(path.parent, os.W_OK):
            # a read-only models volume: unpack into the cache, keyed by the archive's digest
            digest = artifact.sha256 or sha256_of(path)
            entry = self._cache / "sha256" / digest / path.name
            entry.parent.mkdir(parents=True, exist_ok=True)
            return _unpacked(path, entry.with_name(entry.name + ".d"))
        return _unpacked(path)

    def _local(self, artifact: Artifact) -> Path:
        path = Path(urlsplit(artifact.uri).path)
        candidates = [path, *(d / path.name for d in model_dirs(self._search))]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            tried = ", ".join(str(p) for p in candidates)
            raise ArtifactError(MISSING, f"{artifact.uri}: no such file (tried {tried})")
        _verify(found, artifact)
        return found

    def _cached(self, artifact: Artifact, credentials: CredentialEnv | None) -> Path:
        if artifact.sha256 is None:
            raise ArtifactError(
                UNSUPPORTED, f"{redact(artifact.uri)}: a downloaded artifact needs its sha256"
            )
        name = Path(urlsplit(artifact.uri).path).name or "model"
        entry = self._cache / "sha256" / artifact.sha256 / name
        if entry.is_file():
            try:
                _verify(entry, artifact)
                return entry
            except ArtifactError:
                log.warning("cached artifact %s is corrupt; fetching it again", entry)
                entry.unlink(missing_ok=True)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _download_target(entry) as (out, digest):
            for chunk in _stream(artifact, credentials):
                out.write(chunk)
                digest.update(chunk)
            got = digest.hexdigest()
            if got != artifact.sha256:
                raise ArtifactError(
                    MISMATCH,
                    f"{redact(artifact.uri)}: SHA-256 does not match the ModelVariant's "
                    f"artifact.sha256 (the download has {got}, expected {artifact.sha256}); "
                    "not loaded",
                )
        log.info("artifact fetched uri=%s cache=%s", redact(artifact.uri), entry)
        return entry


def _verify(path: Path, artifact: Artifact) -> None:
    if artifact.sha256 is None:
        return
    got = sha256_of(path)
    if got != artifact.sha256:
        raise ArtifactError(
            MISMATCH,
            f"{path}: SHA-256 does not match the ModelVariant's artifact.sha256 (the file has "
            f"{got}, expected {artifact.sha256}); not loaded",
        )


@contextmanager
def _download_target(entry: Path) -> Iterator[tuple[BinaryIO, hashlib._Hash]]:
    """A temporary file beside ``entry`` that becomes ``entry`` only if the block succeeds."""
    fd, temp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out, hashlib.sha256()
        os.replace(temp, entry)
    finally:
        Path(temp).unlink(missing_ok=True)


def _stream(artifact: Artifact, credentials: CredentialEnv | None) -> Iterator[bytes]:
    uri = artifact.uri
    scheme = urlsplit(uri).scheme
    try:
        if scheme == "s3":
            yield from _s3_stream(uri, artifact.endpoint, credentials)
        else:
            yield from _http_stream(uri)
    except ArtifactError:
        raise
    except Exception as exc:  # every client error means the same: this fetch failed
        raise ArtifactError(FETCH_FAILED, f"{redact(uri)}: download failed: {exc}") from exc


def _http_stream(uri: str) -> Iterator[bytes]:
    import httpx

    transport = httpx.HTTPTransport(retries=_HTTP_RETRIES)
    with (
        httpx.Client(
            transport=transport, timeout=_HTTP_TIMEOUT_SECONDS, follow_redirects=True
        ) as client,
        client.stream("GET", uri) as response,
    ):
        if response.status_code == 404:
            raise ArtifactError(MISSING, f"{redact(uri)}: the server has no such file (404)")
        if response.status_code >= 400:
            raise ArtifactError(
                FETCH_FAILED, f"{redact(uri)}: the server answered {response.status_code}"
            )
        yield from response.iter_bytes(_CHUNK)


def s3_client(
    endpoint_url: str | None,
    keys: tuple[str, str] | None = None,
    http_client: urllib3.PoolManager | None = None,
) -> Minio:
    """A MinIO client for an S3-compatible store: ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL`` (default AWS); ``keys`` (access key ID, secret key), else the
    AWS or MinIO env vars or the pod's IAM role; ``http_client`` sets timeouts and retries."""
    from minio import Minio
    from minio.credentials.providers import (
        ChainedProvider,
        EnvAWSProvider,
        EnvMinioProvider,
        IamAwsProvider,
        Provider,
        StaticProvider,
    )

    endpoint = urlsplit(
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "https://s3.amazonaws.com"
    )
    provider: Provider = ChainedProvider([EnvAWSProvider(), EnvMinioProvider(), IamAwsProvider()])
    if keys is not None:
        provider = StaticProvider(*keys)
    return Minio(
        endpoint.netloc,
        secure=endpoint.scheme == "https",
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        credentials=provider,
        http_client=http_client,
    )


def _s3_stream(
    uri: str, endpoint_url: str | None, credentials: CredentialEnv | None
) -> Iterator[bytes]:
    from minio.error import S3Error

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ArtifactError(UNSUPPORTED, f"{redact(uri)}: expected s3://<bucket>/<key>")
    keys = None
    if credentials is not None:
        found = (os.environ.get(credentials.username_env), os.environ.get(credentials.password_env))
        if not (found[0] and found[1]):
            raise ArtifactError(
                FETCH_FAILED,
                f"{redact(uri)}: the artifact's credentials are not in the environment "
                f"({credentials.username_env}, {credentials.password_env}): is its Secret there?",
            )
        keys = (found[0], found[1])
    client = s3_client(endpoint_url, keys)
    try:
        response = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            raise ArtifactError(MISSING, f"{redact(uri)}: {exc.code}") from exc
        raise ArtifactError(FETCH_FAILED, f"{redact(uri)}: {exc.code}: {exc.message}") from exc
    try:
        yield from response.stream(_CHUNK)
    finally:
        response.close()
        response.release_conn()


def _unpacked(archive: Path, folder: Path | None = None) -> Path:
    """The model file inside a verified ``.tar``, unpacked once into ``folder`` (default:
    beside it, ``<name>.d/``)."""
    folder = folder or archive.with_name(archive.name + ".d")
    if not folder.is_dir():
        temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{archive.name}."))
        try:
            with tarfile.open(archive, "r:") as tar:
                tar.extractall(temp, filter="data")  # no absolute paths, links out, devices
            temp.rename(folder)
        except tarfile.TarError as exc:
            raise ArtifactError(
                UNSUPPORTED, f"{archive}: not a readable tar archive: {exc}"
            ) from exc
        except OSError:
            if not folder.is_dir():  # else another worker of the node unpacked it first
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    models = sorted(p for p in folder.rglob("*") if p.suffix in MODEL_SUFFIXES)
    if len(models) != 1:
        raise ArtifactError(
            UNSUPPORTED,
            f"{archive}: expected one model file ({', '.join(MODEL_SUFFIXES)}) inside, "
            f"found {[p.name for p in models]}",
        )
    return models[0]
