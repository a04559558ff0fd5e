"""One verb set across RPCs, the SDK and the CLI: the table below is the contract.

Every public RPC (read from the generated service descriptors) maps to an SDK method (found by
introspecting ``pylon.Client``'s collections) and a CLI command (read from the typer app), or is
listed as internal with the reason. A new RPC, SDK method or CLI command fails these tests until
it takes its place in the table; so does a rename on one side only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import typer

import pylon
from pylon.admin.v1 import admin_pb2
from pylon.cli import app
from pylon.common.v1 import common_pb2
from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2
from pylon.ingest.v1 import ingest_pb2
from pylon.registry.v1 import registry_pb2
from pylon.resources._base import _Resource
from pylon.scheduler.v1 import scheduler_pb2

SERVICES = [m.DESCRIPTOR.services_by_name[s] for m, s in (
    (ingest_pb2, "IngestService"), (scheduler_pb2, "SchedulerService"), (registry_pb2, "RegistryService"),
    (gateway_pb2, "GatewayService"), (admin_pb2, "AdminService"), (common_pb2, "PlatformService"),
    (engine_pb2, "EngineService"))]

# "Service.Rpc": (SDK "collection.method" or Client method, CLI command).
VERBS: dict[str, tuple[str, str]] = {
    # datasets
    "IngestService.CreateDataset": ("datasets.create", "datasets create"),
    "IngestService.GetDataset": ("datasets.get", "datasets get"),
    "IngestService.ListDatasets": ("datasets.list", "datasets list"),
    "IngestService.DeleteDataset": ("datasets.delete", "datasets delete"),
    "IngestService.UploadDatasetVersion": ("datasets.upload", "datasets upload"),  # --stream
    "IngestService.ImportDatasetVersion": ("datasets.import_objects", "datasets import"),
    "IngestService.GetDatasetVersion": ("datasets.get", "datasets get"),  # with a version
    "IngestService.ListDatasetVersions": ("datasets.versions", "datasets versions"),
    "IngestService.PreviewDatasetVersion": ("datasets.preview", "datasets preview"),
    "IngestService.ListRejects": ("datasets.rejects", "datasets rejects"),
    "IngestService.TokenizeDatasetVersion": ("datasets.tokenize", "datasets tokenize"),
    "IngestService.GetOperation": ("datasets.operation", "datasets operation"),
    "IngestService.WatchOperation": ("datasets.watch", "datasets operation"),  # --wait
    # jobs
    "SchedulerService.SubmitJob": ("jobs.submit", "jobs submit"),
    "SchedulerService.GetJob": ("jobs.get", "jobs get"),
    "SchedulerService.ListJobs": ("jobs.list", "jobs list"),
    "SchedulerService.CancelJob": ("jobs.cancel", "jobs cancel"),
    "SchedulerService.WatchJob": ("jobs.wait", "jobs wait"),
    "SchedulerService.StreamLogs": ("jobs.logs", "jobs logs"),
    "SchedulerService.ListJobMetrics": ("jobs.metrics", "jobs metrics"),
    "SchedulerService.ExplainJob": ("jobs.explain", "jobs explain"),
    "SchedulerService.GetCluster": ("jobs.cluster", "cluster"),
    # queues
    "SchedulerService.ListQueues": ("queues.list", "queues list"),
    "SchedulerService.CreateQueue": ("queues.create", "queues create"),
    "SchedulerService.UpdateQueue": ("queues.update", "queues update"),
    # models
    "RegistryService.CreateModel": ("models.create", "models create"),
    "RegistryService.GetModel": ("models.get", "models get"),
    "RegistryService.ListModels": ("models.list", "models list"),
    "RegistryService.UpdateModel": ("models.update", "models update"),
    "RegistryService.DeleteModel": ("models.delete", "models delete"),
    "RegistryService.CreateModelVersion": ("models.register", "models register"),
    "RegistryService.GetModelVersion": ("models.get", "models get"),  # with a version
    "RegistryService.ListModelVersions": ("models.versions", "models versions"),
    "RegistryService.UpdateModelVersion": ("models.archive", "models archive"),
    "RegistryService.DeleteModelVersion": ("models.delete_version", "models delete-version"),
    "RegistryService.SetAlias": ("models.set_alias", "models alias set"),
    "RegistryService.GetAlias": ("models.get_alias", "models alias get"),
    "RegistryService.DeleteAlias": ("models.delete_alias", "models alias delete"),
    "RegistryService.ListAliasHistory": ("models.alias_history", "models alias history"),
    "RegistryService.ResolveModelUri": ("models.resolve", "models resolve"),
    "RegistryService.GetArtifactDownload": ("models.download", "models download"),
    "RegistryService.GetLineage": ("models.lineage", "models lineage"),
    # deployments
    "GatewayService.CreateDeployment": ("deployments.deploy", "deployments deploy"),
    "GatewayService.GetDeployment": ("deployments.get", "deployments get"),
    "GatewayService.ListDeployments": ("deployments.list", "deployments list"),
    "GatewayService.ScaleDeployment": ("deployments.scale", "deployments scale"),
    "GatewayService.UpdateDeploymentSharing": ("deployments.share", "deployments share"),
    "GatewayService.DeleteDeployment": ("deployments.delete", "deployments delete"),
    "GatewayService.Generate": ("generate_stream", "generate"),
    "GatewayService.Complete": ("generate", "generate"),
    "GatewayService.Chat": ("chat_stream", "chat"),
    "GatewayService.ListModels": ("deployments.models", "deployments models"),
    # API keys and identity
    "AdminService.CreateApiKey": ("admin.create_key", "admin create-key"),
    "AdminService.ListApiKeys": ("admin.list_keys", "admin list-keys"),
    "AdminService.DeleteApiKey": ("admin.delete_key", "admin delete-key"),
    "AdminService.WhoAmI": ("admin.whoami", "admin whoami"),
    "RegistryService.RebuildIndex": ("admin.reindex", "admin reindex"),
    # serving limits (the gateway's quotas), admin-managed
    "GatewayService.SetServingLimits": ("admin.set_serving_limits", "admin set-serving-limits"),
    "GatewayService.GetServingLimits": ("admin.get_serving_limits", "admin get-serving-limits"),
}

# RPCs no user calls by name: steps inside an SDK verb, or calls between services.
INTERNAL: dict[str, str] = {
    "IngestService.CreateUploadSession": "datasets.upload, direct path: opens the presigned multipart session",
    "IngestService.GetUploadSession": "datasets.upload resumes an interrupted session",
    "IngestService.CommitUploadSession": "datasets.upload, direct path: completes the parts",
    "IngestService.AbortUploadSession": "abandoned sessions expire; nothing in the SDK gives one up by name",
    "IngestService.GetTokenization": "datasets.tokenize returns the tokenization it made",
    "SchedulerService.UploadWorkingDir": "jobs.submit uploads a spec's command.working_dir",
    "RegistryService.CreateArtifactUpload": "models.register opens the upload of its files",
    "RegistryService.UploadArtifact": "models.register streams files to stores without presigned URLs",
    "RegistryService.DownloadArtifact": "models.download streams from stores without presigned URLs",
    "RegistryService.RecordDeployment": "the gateway records which deployment serves a version",
    "PlatformService.GetPlatform": "Client discovers the services' addresses (`pylon status` shows them)",
    "EngineService.Generate": "the gateway calls its engine replicas",
    "EngineService.GetEngineInfo": "the gateway and operators ask a replica about itself",
    "EngineService.Abort": "the gateway ends a request on the replica serving it",
    "EngineService.GetStats": "the gateway and routers read a replica's load",
}

# Public SDK methods with no RPC of their own: conveniences over verbs mapped above.
SDK_EXTRAS: dict[str, str] = {
    "datasets.wait": "datasets operation --wait",
    "jobs.watch": "jobs wait",
    "jobs.upload_working_dir": "jobs submit",
    "models.export": "models export",
    "deployments.wait_ready": "deployments deploy",
    "chat": "chat",
}

# CLI commands that run the platform itself rather than call a resource's RPC.
CLI_ONLY: dict[str, str] = {
    "up": "starts the local platform",
    "down": "stops it",
    "status": "health of each service",
    "demo": "the walking skeleton",
    "models import": "models register of a Hugging Face directory (format hf_transformers)",
    "bench serve": "the serving load generator over the gateway or an engine (pylon.loadgen, no RPC of its own)",
}

# Where the CLI word cannot be the SDK method's name.
NAME_EXCEPTIONS: dict[str, str] = {
    "datasets.import_objects": "`import` is a Python keyword",
    "datasets.watch": "the CLI follows an operation with `operation --wait`",
    "jobs.cluster": "the cluster is a top-level view, `pylon cluster`",
    "generate_stream": "top-level `pylon generate` streams, like client.generate_stream",
    "chat_stream": "top-level `pylon chat` streams, like client.chat_stream",
    "generate": "top-level `pylon generate` (client.generate is its unary form, Complete)",
    "models.set_alias": "aliases are a sub-group: `models alias set`",
    "models.get_alias": "`models alias get`",
    "models.delete_alias": "`models alias delete`",
    "models.alias_history": "`models alias history`",
}


def _client() -> pylon.Client:
    return pylon.Client("127.0.0.1:1", "unused")  # nothing connects until a call


def _collections(client: pylon.Client) -> dict[str, _Resource]:
    return {name: obj for name, obj in vars(client).items() if isinstance(obj, _Resource)}


def _public_methods(obj: Any) -> set[str]:
    return {n for n, m in inspect.getmembers(type(obj), inspect.isfunction) if not n.startswith("_")}


def _cli_commands(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    subs = getattr(command, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _cli_commands(sub, (*prefix, name))
    else:
        yield " ".join(prefix)


def _sdk(client: pylon.Client, path: str) -> Any:
    obj: Any = client
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def test_every_rpc_is_a_verb_or_listed_as_internal():
    rpcs = {f"{s.name}.{m.name}" for s in SERVICES for m in s.methods}
    assert not set(VERBS) & set(INTERNAL)
    assert sorted(rpcs - set(VERBS) - set(INTERNAL)) == [], "new RPCs: map them to an SDK method and a CLI command"
    assert sorted((set(VERBS) | set(INTERNAL)) - rpcs) == [], "the table names RPCs that no longer exist"


def test_every_sdk_method_of_the_table_exists_and_every_public_one_is_in_it():
    client = _client()
    named = {sdk for sdk, _ in VERBS.values()} | set(SDK_EXTRAS)
    for path in sorted(named):
        assert callable(_sdk(client, path)), f"the SDK has no {path}"
    public = {f"{c}.{m}" for c, obj in _collections(client).items() for m in _public_methods(obj)}
    assert sorted(public - named) == [], "public SDK methods missing from the verb table"


def test_every_cli_command_of_the_table_exists_and_every_command_is_in_it():
    commands = set(_cli_commands(typer.main.get_command(app)))
    named = {cli.split(" --")[0] for cli in [*(cli for _, cli in VERBS.values()), *SDK_EXTRAS.values()]}
    assert sorted(named - commands) == [], "the table names missing CLI commands"
    assert sorted(commands - named - set(CLI_ONLY)) == [], "CLI commands missing from the verb table"


@pytest.mark.parametrize("rpc", sorted(VERBS))
def test_cli_group_and_command_match_the_sdk_collection_and_method(rpc: str):
    sdk, cli = VERBS[rpc]
    if sdk in NAME_EXCEPTIONS:
        return
    collection, method = sdk.split(".")
    group, *words = cli.split()
    assert (group, "-".join(words)) == (collection, method.replace("_", "-")), f"{rpc}: {sdk} vs `pylon {cli}`"


def test_no_cli_group_is_mounted_twice():
    groups = app.registered_groups
    names = [g.name for g in groups]
    assert len(names) == len(set(names)), names
    instances = [id(g.typer_instance) for g in groups]
    assert len(instances) == len(set(instances)), f"one typer app mounted under several names: {names}"


def test_each_sdk_collection_has_its_cli_group():
    groups = {g.name for g in app.registered_groups}
    assert set(_collections(_client())) == groups - {"bench"}  # bench: load tools over the gateway, not a resource
