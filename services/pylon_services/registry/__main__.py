"""``python -m pylon_services.registry``: run the registry service."""

from pylon_services.registry.server import build
from pylon_services.runtime.server import main

main(build)
