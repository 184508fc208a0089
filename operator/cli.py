"""``kubevision-operator``: run the operator against the cluster in the current kubeconfig."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevision-operator", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=importlib.metadata.version("kubevision")
    )
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
