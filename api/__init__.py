"""Shared API types of KubeVision: the custom resources and the worker configuration.

Both the operator and the worker import these models; the CRDs in ``crds/`` are generated
from them, so this package is the single source of truth for the resource schemas.
"""

GROUP = "kubevision.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
