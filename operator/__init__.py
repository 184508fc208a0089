"""The KubeVision operator: kopf handlers that reconcile Cameras, Pipelines and ModelVariants."""
