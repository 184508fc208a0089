"""The alerts ship twice from one source: the plain rule file a Prometheus loads with
``rule_files:`` and the chart's PrometheusRule that embeds it. The real ``promtool`` checks both
and runs the unit tests in ``tests/alerts/``, where every alert has a case where it fires (labels
and annotations checked) and one where it stays silent; a new alert without both fails here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubevision.worker.metrics import WorkerMetrics
from tests.envtest.controlplane import REPO_ROOT, Toolchain
from tests.envtest.prometheus import find_binaries

CHART = REPO_ROOT / "charts" / "kubevision"
RULES = CHART / "files" / "prometheus" / "kubevision-alerts.rules.yaml"
ALERT_TESTS = sorted((REPO_ROOT / "tests" / "alerts").glob("*.test.yaml"))
SEVERITIES = {"critical", "warning"}
"""critical pages someone now; warning opens a ticket (the SRE workbook's page/ticket split)."""


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _load(RULES)["groups"] for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def promtool() -> Path:
    found = find_binaries()
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (make system-packages does)")
    return found[1]


@pytest.fixture(scope="module")
def helm() -> Path:
    return Toolchain.locate().helm


def run_promtool(promtool: Path, *args: str | Path) -> None:
    """Run promtool; fail the test with promtool's own report when it disagrees."""
    done = subprocess.run(
        [str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")


def prometheus_rules(helm: Path, *values: str) -> list[dict[str, Any]]:
    """The PrometheusRule objects ``helm template`` renders with ``--set`` ``values``."""
    sets = [arg for value in values for arg in ("--set", value)]
    out = subprocess.run(
        [
            str(helm),
            "template",
            "kubevision",
            str(CHART),
            "--namespace",
            "kubevision-system",
            *sets,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "PrometheusRule"]


def test_rule_file_passes_promtool_check(promtool: Path) -> None:
    run_promtool(promtool, "check", "rules", RULES)


def test_chart_prometheusrule_is_the_rule_file(helm: Path, promtool: Path, tmp_path: Path) -> None:
    """The PrometheusRule holds exactly the rule file's groups, and promtool accepts them."""
    [rule] = prometheus_rules(helm, "prometheusRule.enabled=true")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "kubevision-system"
    assert rule["spec"]["groups"] == _load(RULES)["groups"]
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run_promtool(promtool, "check", "rules", rendered)


def test_chart_renders_no_prometheusrule_by_default(helm: Path) -> None:
    """Clusters without the Prometheus Operator's CRDs install the chart unchanged."""
    assert prometheus_rules(helm) == []


def test_chart_prometheusrule_takes_namespace_labels_and_annotations(helm: Path) -> None:
    [rule] = prometheus_rules(
        helm,
        "prometheusRule.enabled=true",
        "prometheusRule.namespace=monitoring",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "prometheusRule.annotations.team=video",
    )
    meta = rule["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["release"] == "kube-prometheus-stack"
    assert meta["annotations"] == {"team": "video"}


@pytest.mark.parametrize("test_file", ALERT_TESTS, ids=lambda p: p.name)
def test_alert_unit_tests_pass(promtool: Path, test_file: Path) -> None:
    run_promtool(promtool, "test", "rules", test_file)


def _alert_cases() -> Iterator[tuple[str, bool]]:
    """(alert name, fires?) for every alert_rule_test case of every test file."""
    for test_file in ALERT_TESTS:
        for group in _load(test_file)["tests"]:
            for case in group.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def test_alert_tests_run_the_shipped_rule_file() -> None:
    for test_file in ALERT_TESTS:
        rule_files = [(test_file.parent / f).resolve() for f in _load(test_file)["rule_files"]]
        assert rule_files == [RULES], test_file.name


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = set(_alert_cases())
    missing = [
        f"{alert['alert']} ({'fires' if fires else 'stays silent'})"
        for alert in _alerts()
        for fires in (True, False)
        if (alert["alert"], fires) not in cases
    ]
    assert not missing, f"add cases to tests/alerts/*.test.yaml where: {', '.join(missing)}"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_every_alert_says_how_urgent_and_what_to_do(alert: dict[str, Any]) -> None:
    """Routing needs a known severity; a `for:` keeps one bad scrape from paging anyone."""
    assert alert["labels"]["severity"] in SEVERITIES
    assert alert.get("for"), "every alert waits a while before it fires"
    assert set(alert["annotations"]) == {"summary", "description"}


def test_slo_threshold_is_one_bucket_the_worker_exports() -> None:
    """Every burn-rate window counts the same bucket, and the worker's histogram has it (a
    missing bucket would make every frame count as slow)."""
    thresholds = set(
        re.findall(r'kubevision_frame_latency_seconds_bucket\{le="([^"]+)"\}', RULES.read_text())
    )
    metrics = WorkerMetrics("entrance")
    metrics.camera("door").latency.observe(0.05)
    exported = {
        sample.labels["le"]
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
        if sample.name == "kubevision_frame_latency_seconds_bucket"
    }
    assert len(thresholds) == 1
    assert thresholds <= exported
