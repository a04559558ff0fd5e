"""Discrete-event simulator that drives the scheduler's real policies over traces."""
