"""Bad custom resources (issue 13, part 5), at the test suite's size: the scenario of
:mod:`benchmarks.reliability.bad_resources` on the session's cluster and operator."""

from __future__ import annotations

from kubernetes import client

from benchmarks.reliability import bad_resources as br
from tests.envtest.cluster import LocalCluster
from tests.envtest.operator import OperatorProcess
from tests.envtest.podrunner import PodRunner


def test_invalid_objects_are_rejected_naming_the_field(
    cluster: LocalCluster, chart: str, namespace: str
) -> None:
    """Every generated invalid object is rejected by the API server, and the message names
    the field to fix (rerun a failure with KUBEVISION_FUZZ_SEED=<seed>); every CEL rule of the
    API is violated at least once, so a new rule without a strategy fails here."""
    api = client.CustomObjectsApi(cluster.api_client())
    result = br.fuzz(api, namespace, br.SMALL_EXAMPLES, br.fuzz_seed())
    assert result.tried >= br.SMALL_EXAMPLES * 0.9
    assert not result.accepted, f"seed {result.seed}: accepted {result.accepted[:3]}"
    assert not result.unnamed, f"seed {result.seed}: field not named {result.unnamed[:3]}"
    assert not result.cel_rules_missed, f"CEL rules never violated: {result.cel_rules_missed}"


def test_unsatisfiable_objects_are_explained_without_a_hot_loop(
    cluster: LocalCluster, operator: OperatorProcess, runner: PodRunner, namespace: str
) -> None:
    """Each unsatisfiable Pipeline's condition says why; the operator then reconciles no more
    than once per Pipeline per resync period and logs no traceback."""
    result = br.unsatisfiable(cluster, operator, namespace, operator.resync_seconds, windows=3)
    assert not result.tracebacks, result.tracebacks[0]
    assert result.reconciles <= result.reconcile_bound, result.figures()
