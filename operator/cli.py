"""``kubevision-operator``: run the operator against the cluster in the current kubeconfig
(or, in a pod, its ServiceAccount)."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys

import kopf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevision-operator", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=importlib.metadata.version("kubevision")
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="plain",
        choices=["plain", "json"],
        help="json gives one structured record per line",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (empty to disable)",
    )
    args = parser.parse_args(argv)

    import kubevision.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.configure(
        debug=args.log_level == "debug",
        verbose=args.log_level == "debug",  # kopf narrates every handler call at info
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(args.log_level.upper())
    kopf.run(
        standalone=True,  # one replica; no peering objects needed (and no RBAC for them)
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
