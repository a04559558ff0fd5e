"""Pylon SDK: datasets, jobs, models and deployments on the Pylon ML platform.

    import pylon
    client = pylon.Client()          # PYLON_ADDRESS / PYLON_TOKEN, or the local `pylon up`
    client.jobs.submit({...})
"""

from pylon.client import Client
from pylon.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PylonError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__version__ = "0.1.0"
__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "Client",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PylonError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
