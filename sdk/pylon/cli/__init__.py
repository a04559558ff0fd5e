"""The ``pylon`` command line: the same verbs as the SDK and the RPCs.

Every command takes ``--json`` for machine output. Address and key come from ``--address`` /
``--token``, ``PYLON_ADDRESS`` / ``PYLON_TOKEN``, or the platform a local ``pylon up`` started.
Each resource's commands live in their own module and are mounted here.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from pylon.cli import bench, cluster, datasets, deployments, jobs, models, platform
from pylon.cli._common import _opts, err
from pylon.errors import PylonError
from pylon.resources.models import SymlinkError

app = typer.Typer(help="Pylon: datasets, jobs, models and deployments on one ML platform.", no_args_is_help=True)
platform.register(app)
cluster.register(app)
# One group per resource, named like the SDK's collection (client.datasets -> `pylon datasets`).
for sub, name in ((datasets.datasets_app, "datasets"), (jobs.jobs_app, "jobs"), (models.models_app, "models"),
                  (deployments.deploy_app, "deployments"), (platform.admin_app, "admin"), (bench.bench_app, "bench")):
    app.add_typer(sub, name=name)


@app.callback()
def _global(address: Optional[str] = typer.Option(None, help="Any service's host:port (default $PYLON_ADDRESS)."),
            token: Optional[str] = typer.Option(None, help="API key (default $PYLON_TOKEN).")) -> None:
    _opts.update(address=address, token=token)


def main() -> None:
    try:
        app()
    except PylonError as e:
        err.print(f"error: {e}", markup=False)
        for v in e.violations:
            err.print(f"  {v.field}: {v.description}", markup=False)
        sys.exit(2)
    except SymlinkError as e:
        err.print(f"error: {e}", markup=False)
        err.print("  (on the command line: --follow-symlinks)", markup=False)
        sys.exit(2)
