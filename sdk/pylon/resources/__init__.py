"""The SDK's resource collections: one verb set everywhere (tests/unit/test_verb_table.py holds
them to the RPCs and the CLI).

One module per resource; ``Client`` exposes them as ``client.datasets``, ``client.jobs``, ...
"""

from pylon.resources._base import file_digest
from pylon.resources.admin import Admin
from pylon.resources.datasets import Datasets
from pylon.resources.deployments import Deployments
from pylon.resources.jobs import Jobs
from pylon.resources.models import Models
from pylon.resources.queues import Queues

__all__ = ["Admin", "Datasets", "Deployments", "Jobs", "Models", "Queues", "file_digest"]
