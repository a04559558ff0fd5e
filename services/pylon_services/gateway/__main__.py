"""``python -m pylon_services.gateway``: run the gateway service."""

from pylon_services.gateway.server import build
from pylon_services.runtime.server import main

main(build)
