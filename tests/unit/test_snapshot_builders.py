"""How the operator renders a Pipeline's spec.snapshots: the worker config (bounds, storage,
the Secret only as env var names), the node folder (an emptyDir sized to the bound, or the
chart's hostPath with a folder per pod) and ``--snapshot-dir``."""

from __future__ import annotations

from typing import Any

from kubevision.api.worker_config import SNAPSHOT_CREDENTIAL_ENV
from kubevision.operator.builders import (
    SNAPSHOT_DIR,
    build_statefulset,
    build_worker_config,
)
from kubevision.operator.settings import OperatorSettings
from tests.unit.factories import group, pipeline_spec, sample_pipeline_body
from tests.unit.test_builders import container, pod_spec, statefulset_for


def snapshot_mount(sts: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """(the --snapshot-dir arguments, the volume mounted at SNAPSHOT_DIR)."""
    args = [a for a in container(sts)["args"] if a.startswith("--snapshot-dir=")]
    mounts = [m for m in container(sts)["volumeMounts"] if m["mountPath"] == SNAPSHOT_DIR]
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    return args, volumes[mounts[0]["name"]] if mounts else None


def test_no_snapshots_render_nothing() -> None:
    sts = statefulset_for("cpu")
    assert snapshot_mount(sts) == ([], None)
    assert build_worker_config("people", "vision", pipeline_spec(), group("cpu")).snapshots is None


def test_node_snapshots_get_an_emptydir_sized_to_their_bound() -> None:
    spec = pipeline_spec(snapshots={"maxFiles": 500, "maxBytes": 256 * 2**20})
    args, volume = snapshot_mount(statefulset_for("jetson", spec=spec))
    assert args == [f"--snapshot-dir={SNAPSHOT_DIR}"]
    assert volume == {"name": "snapshots", "emptyDir": {"sizeLimit": "320Mi"}}
    config = build_worker_config("people", "vision", spec, group("jetson", site="site-a"))
    assert config.snapshots is not None
    assert (config.snapshots.storage, config.snapshots.max_files) == ("node", 500)
    assert config.snapshots.events == ["track.started"]


def test_a_node_snapshot_folder_is_a_host_path_with_a_folder_per_pod() -> None:
    settings = OperatorSettings(snapshot_host_path="/var/lib/kubevision/snapshots")
    spec = pipeline_spec(snapshots={})
    sts = build_statefulset(sample_pipeline_body(), spec, group("jetson"), settings)
    args, volume = snapshot_mount(sts)
    assert args == [f"--snapshot-dir={SNAPSHOT_DIR}/vision/$(KUBEVISION_POD_NAME)"]
    assert volume == {
        "name": "snapshots",
        "hostPath": {"path": "/var/lib/kubevision/snapshots", "type": "Directory"},
    }


def test_s3_snapshots_mount_nothing_and_get_the_keys_from_the_secret() -> None:
    spec = pipeline_spec(
        snapshots={
            "storage": "s3",
            "url": "s3://events/site-a",
            "endpoint": "http://minio.storage:9000",
            "credentialsSecretRef": {"name": "snap-keys", "usernameKey": "id"},
        }
    )
    sts = statefulset_for("cpu", spec=spec)
    assert snapshot_mount(sts) == ([], None)
    env = {e["name"]: e.get("valueFrom") for e in container(sts)["env"]}
    assert env[SNAPSHOT_CREDENTIAL_ENV.username_env] == {
        "secretKeyRef": {"name": "snap-keys", "key": "id"}
    }
    assert env[SNAPSHOT_CREDENTIAL_ENV.password_env] == {
        "secretKeyRef": {"name": "snap-keys", "key": "password"}
    }
    config = build_worker_config("people", "vision", spec, group("cpu"))
    assert config.snapshots is not None
    assert config.snapshots.credentials == SNAPSHOT_CREDENTIAL_ENV
    assert "snap-keys" not in config.model_dump_json(), "only the env var names"
