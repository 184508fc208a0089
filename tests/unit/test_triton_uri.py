"""Parsing of ``triton://`` artifact URIs (pure; the backend itself is tested against a real
server in tests/integration/test_triton_backend.py)."""

from __future__ import annotations

import pytest

from kubevision.worker.backends.triton import TritonTarget, parse_triton_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("triton://yolox_nano", TritonTarget("yolox_nano")),
        ("triton://yolox-nano.416/", TritonTarget("yolox-nano.416")),
        ("triton://localhost:8001/yolox", TritonTarget("yolox", url="localhost:8001")),
        (
            "triton://triton.infra.svc:8001/yolox/3",
            TritonTarget("yolox", "3", "triton.infra.svc:8001"),
        ),
        ("triton://10.0.0.7:9001/yolox/12/", TritonTarget("yolox", "12", "10.0.0.7:9001")),
        ("triton://[::1]:8001/yolox", TritonTarget("yolox", url="[::1]:8001")),
    ],
)
def test_valid_uris(uri: str, expected: TritonTarget) -> None:
    assert parse_triton_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///models/yolox.onnx", "must start with triton://"),
        ("TRITON://yolox", "must start with triton://"),
        ("triton://", "model name ''"),
        ("triton://yolox/3", "a server address needs a port"),
        ("triton://host:8001", r"expected triton://<host>:<port>/<model>\[/<version>\]"),
        ("triton://host:8001/", r"expected triton://<host>:<port>/<model>"),
        ("triton://host:8001/a/1/extra", r"expected triton://<host>:<port>/<model>"),
        ("triton://host:/yolox", "must be <host>:<port>"),
        ("triton://:8001/yolox", "must be <host>:<port>"),
        ("triton://host:http/yolox", "invalid port"),
        ("triton://host:70000/yolox", "invalid port"),
        ("triton://host:8001/yolox/latest", "version must be a positive integer, got 'latest'"),
        ("triton://host:8001/yolox/0", "version must be a positive integer, got '0'"),
        ("triton://host:8001/.hidden", "model name '.hidden'"),
        ("triton://host:8001/yo%20lox", "model name 'yo%20lox'"),
        ("triton://yolox?version=2", "takes no user, query or fragment"),
        ("triton://user@host:8001/yolox", "takes no user, query or fragment"),
    ],
)
def test_invalid_uris_say_what_is_wrong(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_triton_uri(uri)
