"""``python -m pylon_services.scheduler``: run the scheduler's API (the leader runs apart:
``python -m pylon_services.scheduler.leader``)."""

from pylon_services.runtime.server import main
from pylon_services.scheduler.server import build

main(build)
