"""``python -m pylon_services.ingest``: run the ingest service."""

from pylon_services.ingest.server import build
from pylon_services.runtime.server import main

main(build)
