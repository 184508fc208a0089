"""The Helm chart installs with the real helm into the real control plane, and its RBAC is
exactly what the operator user gets (the tests' operator kubeconfig authenticates as the
chart's ServiceAccount)."""

from __future__ import annotations

import subprocess

import pytest
from kubernetes import client

from tests.conftest import as_json
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import OPERATOR_NAMESPACE, REPO_ROOT

CHART = REPO_ROOT / "charts" / "kubevision"


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.toolchain.helm), f"--kubeconfig={cluster.kubeconfig()}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def can_i(cluster: LocalCluster, verb: str, resource: str) -> bool:
    """Ask the API server (SelfSubjectAccessReview) what the operator user may do anywhere.

    ``resource`` reads like kubectl's ``plural.group/subresource``; no discovery is needed, so
    the check also works before the CRDs exist.
    """
    name, _, subresource = resource.partition("/")
    plural, _, group = name.partition(".")
    review = {
        "spec": {
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": subresource,
            }
        }
    }
    api = client.AuthorizationV1Api(cluster.api_client("operator"))
    result = api.create_self_subject_access_review(review, _preload_content=False)  # type: ignore[arg-type]
    return bool(as_json(result)["status"]["allowed"])


def test_chart_passes_helm_lint(cluster: LocalCluster) -> None:
    out = helm(cluster, "lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


def test_chart_installs_the_operator_deployment(cluster: LocalCluster, chart: str) -> None:
    out = cluster.control_plane.kubectl(
        "get", "deployment,serviceaccount", "-n", OPERATOR_NAMESPACE, "-o", "name"
    )
    assert "deployment.apps/kubevision-operator" in out.stdout
    assert "serviceaccount/kubevision-operator" in out.stdout


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("watch", "cameras.kubevision.io", True),
        ("patch", "pipelines.kubevision.io/status", True),
        ("update", "pipelines.kubevision.io", False),  # never rewrites a user's spec
        ("create", "deployments.apps", True),
        ("patch", "statefulsets.apps", True),
        ("create", "configmaps", True),
        ("delete", "services", True),
        ("list", "nodes", True),
        ("create", "events", True),
        ("get", "secrets", False),  # credentials reach workers as secretKeyRef only
        ("list", "secrets", False),
        ("delete", "nodes", False),
        ("create", "pods", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ],
)
def test_operator_user_has_exactly_the_charts_rights(
    cluster: LocalCluster, chart: str, verb: str, resource: str, allowed: bool
) -> None:
    assert can_i(cluster, verb, resource) is allowed
