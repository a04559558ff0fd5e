"""Code that runs inside Ray workers: the per-node launcher actor and one job worker's run."""
