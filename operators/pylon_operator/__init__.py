"""Pylon's Kubernetes operator: TrainingJob, ModelDeployment and Dataset custom resources backed by
the scheduler, gateway and ingest services, and KubeRay GPU worker groups scaled from the
scheduler's pending demand. ``python -m pylon_operator`` runs it."""
