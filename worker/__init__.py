"""The KubeVision worker: the data plane that runs in worker pods."""
