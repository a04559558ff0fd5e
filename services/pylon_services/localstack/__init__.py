"""Real backing services started on this machine (SeaweedFS, Redis, Ray) for `pylon up` and tests."""
