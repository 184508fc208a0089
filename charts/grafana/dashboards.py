"""KubeVision's Grafana dashboards, built from code with grafana-foundation-sdk (Grafana 11.6).

``python -m charts.grafana.dashboards`` (or ``make dashboards``) writes them to the chart's
``files/dashboards/``, from where ``templates/dashboards.yaml`` ships one ConfigMap each for
Grafana's dashboard sidecar. The committed JSON is checked against this generator by
``tests/integration/test_dashboards.py``, which also runs every query against a real
Prometheus scraping a real worker and the real operator.

Label conventions the queries rely on: worker series carry ``pipeline``/``camera`` from the
worker itself and ``namespace``/``pod``/``instance`` from the scrape (a PodMonitor or
ServiceMonitor adds them). Operator series carry ``pipeline``/``group`` but the *operator's*
namespace, so operator panels filter by ``pipeline`` only. Worker CPU and memory come from
``process_*`` series, matched to workers through ``instance``. Nothing here needs
kube-state-metrics or a GPU exporter: the worker does not export GPU utilisation, so there is
no GPU-use panel (the decoder panel shows which cameras decode on NVDEC).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, GraphDrawStyle
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    VariableRefresh,
    VariableSort,
)

OUT_DIR = Path(__file__).resolve().parents[1] / "kubevision" / "files" / "dashboards"
TAG = "kubevision"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# Selectors: `W` every worker of the chosen namespaces, `P` the chosen Pipelines' workers, `C`
# their chosen cameras, `OP` the operator's series of the chosen Pipelines.
W = 'namespace=~"$namespace"'
P = f'{W}, pipeline=~"$pipeline"'
C = f'{P}, camera=~"$camera"'
OP = 'pipeline=~"$pipeline"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    """One panel: what it shows (queries), in what unit, as a graph or a single number."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Literal["timeseries", "stat", "bars"] = "timeseries"
    width: int = 12


def _q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _quantiles(metric: str, sel: str, by: str, legend: str) -> tuple[Query, ...]:
    """p50 and p99 of a histogram, per ``by`` (plus ``le``)."""
    return tuple(
        _q(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
            f"{legend} p{int(q * 100)}",
        )
        for q in (0.5, 0.99)
    )


def _per_worker(series: str, sel: str) -> str:
    """A process series of the workers selected by ``sel`` (matched on the scrape target)."""
    return f"{series} * on (instance) group by (instance) (kubevision_queue_depth{{{sel}}})"


def _rate(metric: str, sel: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{sel}}}[{RATE}]))"


def _workers(sel: str, by: str, legend: str) -> list[PanelSpec]:
    cpu = _per_worker(f"rate(process_cpu_seconds_total[{RATE}])", sel)
    memory = _per_worker("process_resident_memory_bytes", sel)
    return [
        PanelSpec(
            "Worker CPU",
            "CPU cores used per worker process (process_cpu_seconds_total).",
            (_q(f"sum by ({by}) ({cpu})", legend),),
            unit="short",
            width=8,
        ),
        PanelSpec(
            "Worker memory",
            "Resident memory per worker process (process_resident_memory_bytes).",
            (_q(f"sum by ({by}) ({memory})", legend),),
            unit="bytes",
            width=8,
        ),
        PanelSpec(
            "Cameras by decoder",
            "Cameras decoding on the CPU (FFmpeg) or on the GPU's NVDEC. The worker exports "
            "no GPU utilisation; use NVIDIA's DCGM exporter for that.",
            (_q(f"sum by (decoder) (kubevision_camera_decoder{{{sel}}})", "{{decoder}}"),),
            width=8,
        ),
    ]


def _scaling(sel: str, by: str, legend: str) -> list[PanelSpec]:
    return [
        PanelSpec(
            "Replicas: desired, ready, short of capacity",
            "What the autoscaler wants, what is ready, and how many more it would want than "
            "maxReplicas or free nvidia.com/gpu allow (the degradation ladder covers those).",
            (
                _q(
                    f"sum by ({by}) (kubevision_operator_desired_replicas{{{sel}}})",
                    f"{legend} desired",
                ),
                _q(
                    f"sum by ({by}) (kubevision_operator_ready_replicas{{{sel}}})",
                    f"{legend} ready",
                ),
                _q(
                    f"sum by ({by}) (kubevision_operator_capacity_short_replicas{{{sel}}})",
                    f"{legend} short of capacity",
                ),
            ),
            width=8,
        ),
        PanelSpec(
            "Scaling decisions",
            "Decisions that changed a group, by direction (up, down, degradation).",
            (
                _q(
                    "sum by (pipeline, direction) (increase("
                    f"kubevision_operator_scaling_decisions_total{{{sel}}}[{RATE}]))",
                    "{{pipeline}} {{direction}}",
                ),
            ),
            kind="bars",
            width=8,
        ),
        PanelSpec(
            "Degradation steps engaged",
            "Steps of spec.degradation.allowed the autoscaler engaged because replicas ran out.",
            (
                _q(
                    f"max by (pipeline, group) (kubevision_operator_degradation_steps{{{sel}}})",
                    "{{group}}",
                ),
            ),
            width=8,
        ),
    ]


def _analytics(sel: str, by_camera: bool) -> list[PanelSpec]:
    per = "camera" if by_camera else "pipeline"
    return [
        PanelSpec(
            "Detections by class",
            "Detections per second kept after filtering, by detector class.",
            (_q(_rate("kubevision_detections_total", sel, "class"), "{{class}}"),),
            unit="short",
        ),
        PanelSpec(
            "Tracks started by class",
            "New tracks per second, by the detector class of their first sighting.",
            (_q(_rate("kubevision_tracks_started_total", sel, "class"), "{{class}}"),),
        ),
        PanelSpec(
            "Active tracks",
            "Tracks the workers hold live (seen, not yet ended).",
            (_q(f"sum by ({per}) (kubevision_tracks_active{{{sel}}})", f"{{{{{per}}}}}"),),
        ),
        PanelSpec(
            "Camera reconnects",
            "Reconnection attempts after a stream failed (a file source that loops counts too).",
            (
                _q(
                    f"sum by (pipeline, camera) (increase("
                    f"kubevision_camera_reconnects_total{{{sel}}}[{RATE}]))",
                    "{{pipeline}}/{{camera}}",
                ),
            ),
            kind="bars",
        ),
    ]


def _frames(sel: str, by: str, legend: str) -> list[PanelSpec]:
    return [
        PanelSpec(
            "Cameras connected / assigned",
            "Cameras delivering frames, of those assigned to workers.",
            (
                _q(f"sum(kubevision_camera_up{{{sel}}})", "connected"),
                _q(f"count(kubevision_camera_up{{{sel}}})", "assigned"),
            ),
            kind="stat",
            width=6,
        ),
        PanelSpec(
            "Frames per second: offered vs processed",
            "Decoded from the cameras (offered), analysed (processed), left out by sampling "
            "(skipped) and lost because the pipeline was slower than the cameras (dropped).",
            (
                _q(f"sum by ({by}) (kubevision_stream_fps{{{sel}}})", f"{legend} offered"),
                _q(_rate("kubevision_frames_processed_total", sel, by), f"{legend} processed"),
                _q(_rate("kubevision_frames_skipped_total", sel, by), f"{legend} skipped"),
                _q(_rate("kubevision_frames_dropped_total", sel, by), f"{legend} dropped"),
            ),
            width=9,
        ),
        PanelSpec(
            "Dropped frames by reason",
            "buffer_full: the capture buffer overwrote a sampled frame; superseded: a newer "
            "frame replaced it while it waited for a batch; stale: overtaken during a lane move.",
            (
                _q(
                    _rate("kubevision_frames_dropped_total", sel, f"{by}, reason"),
                    f"{legend} {{{{reason}}}}",
                ),
            ),
            width=9,
        ),
    ]


def _latency(sel: str, slo_sel: str, by: str, legend: str, pipeline_sel: str) -> list[PanelSpec]:
    return [
        PanelSpec(
            "End-to-end latency vs SLO",
            "Capture to result published, p50 and p99, against the Pipeline's "
            "spec.slo.p99LatencyMs (dashed).",
            (
                *_quantiles("kubevision_frame_latency_seconds", sel, by, legend),
                _q(
                    f"max by (pipeline) (kubevision_slo_p99_latency_seconds{{{slo_sel}}})",
                    "{{pipeline}} SLO p99",
                ),
            ),
            unit="s",
        ),
        PanelSpec(
            "Latency per stage",
            "p50 and p99 of each stage (decode, preprocess, infer, postprocess, track, "
            "classify, publish).",
            _quantiles("kubevision_stage_latency_seconds", pipeline_sel, "stage", "{{stage}}"),
            unit="s",
        ),
        PanelSpec(
            "Queue depth",
            "Frames waiting for inference (capture buffers plus the batcher).",
            (_q(f"sum by (pipeline) (kubevision_queue_depth{{{pipeline_sel}}})", "{{pipeline}}"),),
        ),
        PanelSpec(
            "Batch size",
            "Frames per inference batch: p50, p99 and mean.",
            (
                *_quantiles("kubevision_batch_size", pipeline_sel, "pipeline", "{{pipeline}}"),
                _q(
                    f"sum by (pipeline) (rate(kubevision_batch_size_sum{{{pipeline_sel}}}[{RATE}]))"
                    f" / sum by (pipeline) (rate(kubevision_batch_size_count{{{pipeline_sel}}}"
                    f"[{RATE}]))",
                    "{{pipeline}} mean",
                ),
            ),
        ),
    ]


def _operator() -> list[PanelSpec]:
    return [
        PanelSpec(
            "Operator reconciles",
            "Reconciles per second by kind and result.",
            (
                _q(
                    f"sum by (kind, result) (rate(kubevision_operator_reconciles_total[{RATE}]))",
                    "{{kind}} {{result}}",
                ),
            ),
        ),
        PanelSpec(
            "Operator reconcile errors",
            "Failed reconciles per second by kind (retried with backoff).",
            (
                _q(
                    "sum by (kind) (rate("
                    f'kubevision_operator_reconciles_total{{result="error"}}[{RATE}]))',
                    "{{kind}}",
                ),
            ),
        ),
    ]


def overview_rows() -> list[tuple[str, list[PanelSpec]]]:
    every = 'pipeline=~".*"'
    return [
        ("Cameras and frames", _frames(W, "pipeline", "{{pipeline}}")),
        ("Latency", _latency(W, W, "pipeline", "{{pipeline}}", W)),
        ("Workers", _workers(W, "namespace, pod", "{{namespace}}/{{pod}}")),
        ("Autoscaling", _scaling(every, "pipeline", "{{pipeline}}")),
        ("Analytics", _analytics(W, by_camera=False)),
        ("Operator", _operator()),
    ]


def pipeline_rows() -> list[tuple[str, list[PanelSpec]]]:
    return [
        ("Cameras and frames", _frames(C, "camera", "{{camera}}")),
        ("Latency", _latency(C, P, "camera", "{{camera}}", P)),
        ("Workers", _workers(P, "pod", "{{pod}}")),
        ("Autoscaling", _scaling(OP, "group", "{{group}}")),
        ("Analytics", _analytics(C, by_camera=True)),
    ]


# -- building ---------------------------------------------------------------------------------


def _target(query: Query, ref: str) -> Dataquery:
    return (
        Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref).datasource(DATASOURCE)
    )


def _panel(spec: PanelSpec, panel_id: int) -> stat.Panel | timeseries.Panel:
    panel: stat.Panel | timeseries.Panel
    if spec.kind == "stat":
        panel = (
            stat.Panel()
            .graph_mode(BigValueGraphMode.AREA)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        )
    else:
        panel = timeseries.Panel().fill_opacity(10)
        if spec.kind == "bars":
            panel = panel.draw_style(GraphDrawStyle.BARS)
        panel = panel.override_by_regexp(
            ".*SLO.*",
            [DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})],
        )
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(spec.width)
    )
    for i, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + i)))
    return panel


def _variable(name: str, label: str, query: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def variables(levels: int) -> list[DatasourceVariable | QueryVariable]:
    """datasource, then the first ``levels`` of namespace > pipeline > camera (each narrowing
    the next, as Grafana's chained variables do)."""
    chain = [
        ("namespace", "Namespace", "label_values(kubevision_camera_up, namespace)"),
        ("pipeline", "Pipeline", f"label_values(kubevision_camera_up{{{W}}}, pipeline)"),
        ("camera", "Camera", f"label_values(kubevision_camera_up{{{P}}}, camera)"),
    ]
    source = DatasourceVariable("datasource").label("Data source").type("prometheus")
    return [source, *(_variable(*v) for v in chain[:levels])]


def _dashboard(
    uid: str,
    title: str,
    description: str,
    rows: Sequence[tuple[str, list[PanelSpec]]],
    levels: int,
) -> Dashboard:
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(list(variables(levels)))
        .link(
            DashboardLink("KubeVision")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    panel_id = 1
    for row_title, specs in rows:
        board = board.with_row(Row(row_title).id(panel_id))
        panel_id += 1
        for spec in specs:
            board = board.with_panel(_panel(spec, panel_id))
            panel_id += 1
    return board


def dashboards() -> dict[str, str]:
    """File name -> dashboard JSON (what the chart ships)."""
    boards = {
        "kubevision-overview.json": _dashboard(
            "kubevision-overview",
            "KubeVision / Overview",
            "Every Pipeline's cameras, frames, latency against its SLO, workers, autoscaling "
            "and the operator.",
            overview_rows(),
            levels=1,
        ),
        "kubevision-pipeline.json": _dashboard(
            "kubevision-pipeline",
            "KubeVision / Pipeline",
            "One Pipeline (and some of its cameras) in detail.",
            pipeline_rows(),
            levels=3,
        ),
    }
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(board.build()) + "\n" for name, board in boards.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the JSON files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in dashboards().items():
        (args.out / name).write_text(text)
        print(args.out / name)


if __name__ == "__main__":
    main()
