"""``kubevision-operator``: run the operator against the cluster in the current kubeconfig
(or, in a pod, its ServiceAccount)."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import random
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
    parser.add_argument(
        "--peering",
        default="",
        help="kopf peering object shared by the replicas, only the highest priority one active "
        "(a ClusterKopfPeering, or a KopfPeering in each --namespace); empty: standalone",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; default: random, so that replicas of one Deployment differ",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds a silent replica counts as alive: a standby takes over this long after "
        "the active one died at the latest",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="split the objects into this many shards; each replica reconciles the shards it "
        "holds a Lease for, rebalanced when replicas come and go (exclusive with --peering)",
    )
    args = parser.parse_args(argv)
    if args.shards is not None:
        if args.peering and args.shards > 1:
            parser.error("--shards and --peering are exclusive: shards already elect per shard")
        os.environ["KUBEVISION_SHARDS"] = str(args.shards)  # read by OperatorSettings.from_env

    import kubevision.operator.handlers  # noqa: F401  (registers the handlers with kopf)
    from kubevision.operator import kopf_toggles

    kopf_toggles.install()  # else start-up with thousands of objects is quadratic

    kopf.configure(
        debug=args.log_level == "debug",
        verbose=args.log_level == "debug",  # kopf narrates every handler call at info
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(args.log_level.upper())
    if args.log_level != "debug":
        # kopf narrates every handler of every object event at info ("Handler ... succeeded"):
        # at 10,000 Cameras that is tens of thousands of lines a minute and a share of the CPU
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    kopf.run(
        settings=settings,
        standalone=not args.peering,
        peering_name=args.peering or None,
        priority=_priority(args.priority) if args.peering else None,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


def _priority(given: int | None) -> int:
    """kopf pauses every replica when two share the highest priority, so replicas pick a random
    one from 2**31 values (kopf's docs suggest bash's $RANDOM: 32768 values, and no shell in a
    distroless image)."""
    return given if given is not None else random.SystemRandom().randrange(1, 2**31)


if __name__ == "__main__":
    sys.exit(main())
