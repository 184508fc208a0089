"""The Helm chart with the real helm on the real control plane: its values are validated by its
schema, every object it renders is accepted by the API server (the Prometheus Operator's CRDs
included), its RBAC is exactly what the operator user gets, and a release goes through install
-> reconcile -> leader failover -> upgrade -> uninstall in a Pod Security "restricted"
namespace."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubevision.operator.planner import group_name
from tests.conftest import as_json
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import BUILD_SCRIPT, OPERATOR_NAMESPACE, REPO_ROOT
from tests.envtest.operator import RUNTIME_CLASS, OperatorProcess
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace

CHART = REPO_ROOT / "charts" / "kubevision"
SAMPLES = REPO_ROOT / "crds" / "samples"
CATALOG = REPO_ROOT / "model_catalog" / "variants"
MONITORING_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")
LIFETIME = 10
"""The e2e release's peering lifetime (operator.leaderElection.lifetimeSeconds): the longest a
standby waits for a killed leader's keep-alive to expire."""
INSTANCE_LABEL = "app.kubernetes.io/instance"
SAMPLE_FILES = (
    SAMPLES / "camera.yaml",
    SAMPLES / "pipeline.yaml",
    CATALOG / "yolox-nano.yaml",
    CATALOG / "classifiers.yaml",
)

NODE_SPOOL = "/var/lib/kubevision/spool"
"""A node folder for the workers' disk spools (``workers.spoolHostPath``)."""
EVERYTHING = [
    "serviceMonitor.enabled=true",
    "serviceMonitor.labels.release=prometheus",
    "podMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "dashboards.enabled=true",
    "networkPolicy.operator.enabled=true",
    "networkPolicy.workers.enabled=true",
    "operator.priorityClassName=system-cluster-critical",
    "workers.engineCacheHostPath=/var/lib/kubevision/engines",
    f"workers.spoolHostPath={NODE_SPOOL}",
]
"""``--set`` values turning every optional object of the chart on."""


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.toolchain.helm), f"--kubeconfig={cluster.kubeconfig()}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def template(cluster: LocalCluster, namespace: str, *values: str) -> list[dict[str, Any]]:
    """``helm template`` the chart with ``--set`` values; the rendered objects."""
    sets = [f"--set={v}" for v in values]
    out = helm(cluster, "template", "kv", str(CHART), f"--namespace={namespace}", *sets)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


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


# -- the chart on its own -----------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], EVERYTHING], ids=["defaults", "everything-enabled"])
def test_chart_passes_helm_lint_strict(cluster: LocalCluster, values: list[str]) -> None:
    out = helm(cluster, "lint", "--strict", str(CHART), *[f"--set={v}" for v in values])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.logLevel=verbose", "operator/logLevel"),
        ("operator.logFormat=xml", "operator/logFormat"),
        ("operator.replicas=-1", "operator/replicas"),
        ("operator.replica=2", "replica"),  # a typo is an error, not silently ignored
        ("operator.leaderElection.lifetimeSeconds=2", "lifetimeSeconds"),
        ("operator.shards=0", "operator/shards"),
        ("operator.shardLeaseSeconds=1", "shardLeaseSeconds"),
        ("serviceMonitor.interval=soon", "serviceMonitor/interval"),
        ("podMonitor.enabled=maybe", "podMonitor/enabled"),
        ("workerImages.gpu.repository=", "workerImages/gpu/repository"),
        ("image.pullPolicy=Sometimes", "image/pullPolicy"),
        ("prometheusRule.enable=true", "enable"),
        ("dashboards.labelValue.x=1", "dashboards/labelValue"),
        ("workers.spoolHostPath=var/spool", "workers/spoolHostPath"),  # a node path is absolute
        ("workers.artifactCacheHostPath=cache", "workers/artifactCacheHostPath"),
        ("workers.models.persistentVolumeClaim=Models", "workers/models/persistentVolumeClaim"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_value(
    cluster: LocalCluster, value: str, message: str
) -> None:
    out = helm(cluster, "template", "kv", str(CHART), f"--set={value}")
    assert out.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr, out.stderr


def test_defaults_run_two_spread_operator_replicas_with_one_active(cluster: LocalCluster) -> None:
    objects = template(cluster, "kv-system")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert "--peering=kv-kubevision-operator" in operator["args"]
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "kv-kubevision-operator"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"]["path"] == "/healthz"
    assert operator["resources"]["requests"]
    assert operator["resources"]["limits"]["memory"]
    assert {o["kind"] for o in objects} >= {"Service", "ClusterRole", "ServiceAccount"}
    assert not {"ServiceMonitor", "PodMonitor", "NetworkPolicy"} & {o["kind"] for o in objects}


def test_shards_make_every_replica_active_on_its_shards(cluster: LocalCluster) -> None:
    """operator.shards > 1: no kopf peering; each replica knows its name and namespace and may
    hold Leases there, and nowhere else."""
    objects = template(cluster, "kv-system", "operator.shards=3", "operator.replicas=3")
    deployment = one(objects, "Deployment")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert "--shards=3" in operator["args"]
    assert not [a for a in operator["args"] if a.startswith("--peering")]
    assert not [o for o in objects if o["kind"] == "ClusterKopfPeering"]
    env = {e["name"]: e for e in operator["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KUBEVISION_SHARD_LEASE_SECONDS"]["value"] == "15"
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == "kv-system"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update"],
        }
    ]
    assert one(objects, "RoleBinding")["roleRef"]["name"] == role["metadata"]["name"]
    assert not [o for o in template(cluster, "kv-system") if o["kind"] == "Role"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            [],
            {
                "KUBEVISION_WORKER_IMAGE": "ghcr.io/kubevision/worker:{v}",
                "KUBEVISION_WORKER_IMAGE_GPU": "ghcr.io/kubevision/worker:{v}-cuda",
                "KUBEVISION_WORKER_IMAGE_JETSON": "ghcr.io/kubevision/worker:{v}-l4t-r36",
                "operator": "ghcr.io/kubevision/operator:{v}",
            },
        ),
        (
            [
                "image.repository=registry.local/op",
                "image.tag=dev",
                "workerImages.gpu.repository=registry.local/gpu",
                "workerImages.gpu.tag=cu13",
            ],
            {
                "KUBEVISION_WORKER_IMAGE": "ghcr.io/kubevision/worker:{v}",
                "KUBEVISION_WORKER_IMAGE_GPU": "registry.local/gpu:cu13",
                "KUBEVISION_WORKER_IMAGE_JETSON": "ghcr.io/kubevision/worker:{v}-l4t-r36",
                "operator": "registry.local/op:dev",
            },
        ),
    ],
    ids=["defaults", "overridden"],
)
def test_images_per_worker_flavour_reach_the_operator(
    cluster: LocalCluster, values: list[str], expected: dict[str, str]
) -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (operator,) = one(template(cluster, "kv-system", *values), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    for name, image in expected.items():
        actual = operator["image"] if name == "operator" else env[name]
        assert actual == image.format(v=version)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([f"workers.spoolHostPath={NODE_SPOOL}"], NODE_SPOOL)],
    ids=["defaults", "node-folder"],
)
def test_the_spool_host_path_reaches_the_operator_only_when_set(
    cluster: LocalCluster, values: list[str], expected: str | None
) -> None:
    (operator,) = one(template(cluster, "kv-system", *values), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env.get("KUBEVISION_SPOOL_HOST_PATH") == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {}),
        (
            ["workers.models.persistentVolumeClaim=models", "workers.artifactCacheHostPath=/c"],
            {"KUBEVISION_MODELS_CLAIM": "models", "KUBEVISION_ARTIFACT_CACHE_HOST_PATH": "/c"},
        ),
        (["workers.models.hostPath=/srv/models"], {"KUBEVISION_MODELS_HOST_PATH": "/srv/models"}),
    ],
    ids=["defaults", "claim-and-node-cache", "node-models"],
)
def test_the_models_volume_and_artifact_cache_reach_the_operator_only_when_set(
    cluster: LocalCluster, values: list[str], expected: dict[str, str]
) -> None:
    (operator,) = one(template(cluster, "kv-system", *values), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    names = ("KUBEVISION_MODELS_CLAIM", "KUBEVISION_MODELS_HOST_PATH")
    got = {n: env[n] for n in (*names, "KUBEVISION_ARTIFACT_CACHE_HOST_PATH") if n in env}
    assert got == expected


def test_models_come_from_a_claim_or_a_node_folder_not_both(cluster: LocalCluster) -> None:
    both = ("workers.models.persistentVolumeClaim=models", "workers.models.hostPath=/srv/models")
    out = helm(cluster, "template", "kv", str(CHART), *[f"--set={v}" for v in both])
    assert out.returncode != 0, "both sources were accepted"
    assert "workers/models" in out.stderr, out.stderr


def prometheus_operator_crds() -> Path:
    """The Prometheus Operator's CRD folder (the third line tests/toolchain/build.sh prints)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.split()[2])


@pytest.fixture(scope="module")
def monitoring_crds(cluster: LocalCluster) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule served with their real, pinned schema."""
    folder = prometheus_operator_crds()
    for plural in MONITORING_CRDS:
        path = folder / f"monitoring.coreos.com_{plural}.yaml"
        cluster.control_plane.kubectl("apply", "--server-side", "-f", str(path))
        cluster.control_plane.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            f"crd/{plural}.monitoring.coreos.com",
        )


def test_every_rendered_object_passes_server_side_dry_run(
    cluster: LocalCluster, chart: str, monitoring_crds: None, namespace: str
) -> None:
    values = [*EVERYTHING, f"networkPolicy.workers.namespaces[0]={namespace}"]
    objects = template(cluster, namespace, *values)
    kinds = {o["kind"] for o in objects}
    assert kinds >= {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "ClusterKopfPeering",
        "PodDisruptionBudget",
    }
    out = cluster.control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--field-manager=helm",
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    accepted = [line for line in out.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objects), out.stdout


def test_a_monitor_with_a_bad_field_is_rejected_by_its_real_schema(
    cluster: LocalCluster, monitoring_crds: None, namespace: str
) -> None:
    # proves the dry run above checks the ServiceMonitor's schema, not only its apiVersion
    monitor = one(template(cluster, namespace, *EVERYTHING), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    out = cluster.control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(monitor), check=False
    )
    assert out.returncode != 0
    assert "scheme" in out.stderr


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
        ("patch", "clusterkopfpeerings.kopf.dev", True),  # leader election between replicas
        ("watch", "kopfpeerings.kopf.dev", True),
        ("delete", "clusterkopfpeerings.kopf.dev", False),
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


# -- a release's life in a restricted namespace -------------------------------------------------


@dataclass
class Release:
    """A chart release of its own in a Pod Security "restricted" namespace, watching only that
    namespace, and its operator replicas as local processes (there is no kubelet)."""

    cluster: LocalCluster
    name: str
    ns: Namespace
    logs: Path
    operators: dict[str, OperatorProcess] = field(default_factory=dict)

    def helm(self, verb: str, *values: str) -> None:
        out = helm(
            self.cluster,
            verb,
            self.name,
            str(CHART),
            f"--namespace={self.ns.name}",
            f"--set=operator.watchNamespaces[0]={self.ns.name}",
            f"--set=operator.leaderElection.lifetimeSeconds={LIFETIME}",
            *[f"--set={v}" for v in values],
            "--wait=false",
        )
        assert out.returncode == 0, out.stderr

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = self.ns.get("deployment", f"{self.name}-kubevision-operator")
        return found

    def start_operator(self, identity: str) -> OperatorProcess:
        """One replica as its pod would run: the Deployment's args and KUBEVISION_* env, kopf's
        identity from POD_ID, and the release ServiceAccount's token."""
        (container,) = self.deployment()["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.pop("KUBEVISION_OPERATOR_METRICS_PORT")  # each local process gets a free port
        args = [a for a in container["args"] if not a.startswith("--liveness")]
        proc = OperatorProcess(
            self.cluster,
            self.logs / f"{self.name}-{identity}.log",
            args=args,
            env={**env, "POD_ID": identity},
            kubeconfig=self.token_kubeconfig(),
        )
        proc.start()
        self.operators[identity] = proc
        return proc

    def token_kubeconfig(self) -> Path:
        """A kubeconfig holding a TokenRequest token of the release's ServiceAccount."""
        sa = f"{self.name}-kubevision-operator"
        token = self.ns.kubectl("create", "token", sa, "--duration=1h").strip()
        admin = yaml.safe_load(self.cluster.kubeconfig().read_text())
        admin["users"] = [{"name": sa, "user": {"token": token}}]
        admin["contexts"][0]["context"]["user"] = sa
        path = self.logs / f"{self.name}.kubeconfig"
        path.write_text(yaml.safe_dump(admin))
        path.chmod(0o600)
        return path


RESUMED = "Resuming operations after the pause"
"""kopf's log line when a replica starts working (also once at start-up, unless it waits)."""


def active_and_standby(release: Release) -> tuple[OperatorProcess, OperatorProcess]:
    """(the replica reconciling, the paused one): one has reconciled Pipelines a few times
    (every autoscaling interval, 5 s) while the other has not once."""
    first, second = release.operators.values()

    def settled() -> tuple[OperatorProcess, OperatorProcess] | None:
        counts = {proc: proc.reconciles("pipeline") for proc in (first, second)}
        active = max(counts, key=lambda proc: counts[proc])
        standby = second if active is first else first
        return (active, standby) if counts[active] >= 4 and counts[standby] == 0 else None

    return wait_for(settled, timeout=90, what="one replica reconciling and the other paused")


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, chart: str, core: client.CoreV1Api) -> Iterator[Release]:
    name = f"kv-{uuid.uuid4().hex[:6]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace({"metadata": {"name": name, "labels": labels}})  # type: ignore[arg-type]
    logs = cluster.state_dir / "logs"
    rel = Release(cluster, name, Namespace(cluster, name), logs)
    cluster.control_plane.kubectl("apply", "-f", str(RUNTIME_CLASS))
    try:
        rel.helm("install")
        rel.start_operator("replica-a")
        rel.start_operator("replica-b")
        rel.ns.apply(*SAMPLE_FILES)
        yield rel
    finally:
        for proc in rel.operators.values():
            proc.stop()
        helm(cluster, "uninstall", name, f"--namespace={name}")
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


def created_pods(ns: Namespace, selector: str, count: int) -> list[dict[str, Any]]:
    def created() -> list[dict[str, Any]] | None:
        pods = ns.items("pods", selector)
        return pods if len(pods) >= count else None

    return wait_for(created, timeout=60, what=f"{count} pod(s) {selector} created")


def test_restricted_namespace_admits_the_operator_and_worker_pods(release: Release) -> None:
    ns = release.ns
    # the controller-manager creates the pods of the Deployment and of the operator's GPU and
    # Jetson StatefulSets: PodSecurity "restricted" admitted each of them
    created_pods(ns, f"{INSTANCE_LABEL}={release.name}", 2)
    for group in (
        group_name("people", "site-a", "nvidia-gpu"),
        group_name("people", "site-b", "jetson"),
    ):
        for pod in created_pods(ns, f"kubevision.io/group={group}", 1):
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_restricted_namespace_rejects_a_worker_pod_with_a_host_path(release: Release) -> None:
    ns = release.ns
    sts = wait_for(
        lambda: ns.get("statefulset", group_name("people", "site-a", "nvidia-gpu")),
        timeout=60,
        what="the GPU group's StatefulSet",
    )
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}}
    pod["spec"] = sts["spec"]["template"]["spec"]
    accepted = ns.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    assert "created (server dry run)" in accepted
    # what workers.engineCacheHostPath renders: fine elsewhere, but not "restricted"
    engines = next(v for v in pod["spec"]["volumes"] if v["name"] == "engines")
    engines.pop("emptyDir")
    engines["hostPath"] = {"path": "/var/lib/kubevision/engines", "type": "DirectoryOrCreate"}
    out = ns.cluster.control_plane.kubectl(
        "-n", ns.name, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr
    assert "hostPath" in out.stderr


def test_restricted_namespace_admits_a_spool_claim_but_not_a_spool_host_path(
    release: Release,
) -> None:
    """A worker's disk spool on a PersistentVolumeClaim (``spec.spool.persistentVolumeClaim``,
    mounted from the StatefulSet's claim template) keeps the pod "restricted"; on the chart's
    ``workers.spoolHostPath`` it does not, as the README says."""
    ns = release.ns
    sts = wait_for(
        lambda: ns.get("statefulset", group_name("people", "site-b", "jetson")),
        timeout=60,
        what="the Jetson group's StatefulSet",
    )
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}}
    pod["spec"] = sts["spec"]["template"]["spec"]
    spool = next(v for v in pod["spec"]["volumes"] if v["name"] == "spool")
    spool.clear()
    spool.update(name="spool", persistentVolumeClaim={"claimName": "spool-probe-0"})
    accepted = ns.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    assert "created (server dry run)" in accepted
    spool.pop("persistentVolumeClaim")
    spool["hostPath"] = {"path": NODE_SPOOL, "type": "Directory"}
    out = ns.cluster.control_plane.kubectl(
        "-n", ns.name, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr


def test_only_one_replica_reconciles_and_the_standby_takes_over_when_it_dies(
    release: Release, record_property: Any
) -> None:
    ns = release.ns
    active, standby = active_and_standby(release)
    resumed = standby.log().count(RESUMED)
    active.kill()
    killed = time.monotonic()
    ns.apply(docs=[second_pipeline()])  # a change only a working operator can act on
    wait_for(
        lambda: standby.reconciles("pipeline") > 0,
        timeout=LIFETIME + 30,
        what="the standby to take over and reconcile",
    )
    takeover = time.monotonic() - killed
    record_property("failover_seconds", round(takeover, 1))
    print(f"failover: standby reconciling {takeover:.1f}s after SIGKILL (lifetime {LIFETIME}s)")
    assert standby.log().count(RESUMED) == resumed + 1, "kopf's peering resumed the standby"
    wait_for(
        lambda: ns.get("statefulset", group_name("people-2", "site-a", "nvidia-gpu")),
        timeout=30,
        what="the new Pipeline's StatefulSet",
    )
    assert takeover <= LIFETIME + 15


def second_pipeline() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / "pipeline.yaml").read_text())
    body["metadata"]["name"] = "people-2"
    return body


def assignments(ns: Namespace) -> dict[str, Any]:
    return {c["metadata"]["name"]: c["status"].get("assignments") for c in ns.items("cameras")}


def test_upgrade_rolls_the_operator_and_cameras_stay_assigned(release: Release) -> None:
    ns = release.ns
    before = release.deployment()["spec"]["template"]
    pipelines = len(ns.items("pipelines"))  # every sample camera matches every Pipeline
    assigned = wait_for(
        lambda: (a := assignments(ns)) and all(len(v or []) == pipelines for v in a.values()) and a,
        timeout=60,
        what="every camera assigned by every Pipeline (one may just have been created)",
    )
    release.helm("upgrade", "operator.resyncSeconds=7", "operator.logLevel=debug")
    after = release.deployment()["spec"]["template"]
    assert after != before
    wait_for(
        lambda: len(ns.items("replicasets", f"{INSTANCE_LABEL}={release.name}")) == 2,
        timeout=60,
        what="a second ReplicaSet (a new pod-template-hash): the Deployment rolls",
    )
    # the roll, as the kubelet would do it: the old replicas stop, new ones start
    for proc in release.operators.values():
        proc.stop()
    rolled = release.start_operator("replica-c")
    wait_for(lambda: rolled.reconciles("pipeline") > 0, timeout=60, what="the new replica working")
    assert assignments(ns) == assigned


def test_uninstall_leaves_nothing_of_the_release_behind(release: Release) -> None:
    ns, cluster = release.ns, release.cluster
    ns.kubectl("delete", "pipelines,cameras,modelvariants", "--all", "--wait=true")
    out = helm(cluster, "uninstall", release.name, f"--namespace={ns.name}", "--wait")
    assert out.returncode == 0, out.stderr
    kinds = cluster.control_plane.kubectl("api-resources", "--verbs=list", "-o", "name").stdout
    listable = ",".join(k for k in kinds.split() if not k.startswith("events"))

    def leftovers() -> str:
        return cluster.control_plane.kubectl(
            "get", listable, "-A", "-l", f"{INSTANCE_LABEL}={release.name}", "-o", "name"
        ).stdout.strip()

    wait_for(lambda: not leftovers(), timeout=60, what="no object labelled with the release")
    crds = cluster.control_plane.kubectl("get", "crd", "-o", "name").stdout
    for crd in ("pipelines.kubevision.io", "clusterkopfpeerings.kopf.dev"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in crds, "CRDs are kept"
