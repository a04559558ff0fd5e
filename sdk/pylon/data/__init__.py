"""``pylon.data``: read the token shards of a tokenized dataset version for training.

``ShardReader`` streams fixed-length token windows from object storage (``S3Source``) or a
local folder (``LocalSource``) with prefetch, seeded shuffling, disjoint splits across
data-parallel ranks and exact resume from ``state_dict()``.
"""

from pylon.data.reader import ShardReader
from pylon.data.sources import LocalSource, ObjectSource, S3Source

__all__ = ["LocalSource", "ObjectSource", "S3Source", "ShardReader"]
