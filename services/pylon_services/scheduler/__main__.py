"""``python -m pylon_services.scheduler``: run the scheduler service."""

from pylon_services.runtime.server import main
from pylon_services.scheduler.server import build

main(build)
