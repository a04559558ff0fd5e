"""Trainers that scheduler jobs run inside Ray workers.

Importing this package loads nothing heavy: each trainer registers in ``pylon_services.workloads``
with a torch-free config check, and its training code (torch) is imported only by the worker.
"""
