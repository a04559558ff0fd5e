"""What a submitted spec's references are pinned to before the job is queued: each dataset
version's number ("latest" as it is now), a token-reading trainer's tokenizations, and a check of
a base model's format and tokenizer against the trainer and its datasets.

Pinning at submit makes every attempt of a job (retries, resumes after preemption) read the same
data and lets lineage name it, and it turns what would fail inside a worker minutes later (no such
version, not tokenized, another tokenizer) into a FAILED_PRECONDITION the submitter sees at once.
Everything is read straight from the object store through ``common/layout.py`` (the manifests are
immutable), in threads: the store client blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pylon_services.common import blobs, layout
from pylon_services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from pylon_services.common.tokenizers import NotATokenizer, fingerprint
from pylon_services.scheduler.domain.spec import Command, JobSpec, TokenData, Trainer
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads import Workload

# A dataset reference after ``inputs.in_tenant``: the tenant is written out.
_VERSION = re.compile(r"tenants/([^/]+)/datasets/([^/]+)/versions/([^/]+)")
MAX_TOKENIZATIONS = 100  # listed per version; more is not a set anyone picks from by hand
MAX_TOKENIZER_BYTES = 64 << 20  # a tokenizer.json of a 256k vocabulary is a few tens of MiB
TOKENIZER_FILE = "tokenizer.json"


async def pin_datasets(store: ObjectStore, spec: JobSpec) -> JobSpec:
    """``spec`` with each dataset of its trainer or command named by version number; a version
    that does not exist (or a deleted dataset) is FAILED_PRECONDITION naming it."""
    w = spec.workload
    if not isinstance(w, (Trainer, Command)) or not w.datasets:
        return spec
    pinned = await asyncio.gather(*(asyncio.to_thread(_pin_version, store, d) for d in w.datasets))
    return dataclasses.replace(spec, workload=dataclasses.replace(w, datasets=tuple(pinned)))


def _pin_version(store: ObjectStore, name: str) -> str:
    m = _VERSION.fullmatch(name)
    if m is None:  # in_tenant checked the shape
        raise InvalidArgument(f"{name} is not a dataset version")
    tenant, dataset, version = m.groups()
    record = blobs.read_json_or_none(store, layout.dataset_key(tenant, dataset))
    if record is None or record.get("delete_time"):
        raise FailedPrecondition(f"dataset tenants/{tenant}/datasets/{dataset} does not exist")
    try:
        doc = layout.read_dataset_version(store, tenant, dataset, version)
    except NotFound:
        raise FailedPrecondition(f"{name} does not exist"
                                 + (" (the dataset has no version yet)" if version == "latest" else "")) from None
    return f"tenants/{tenant}/datasets/{dataset}/versions/{int(doc['version'])}"


async def pin_tokens(store: ObjectStore, trainer: Trainer) -> Trainer:
    """``trainer`` with the tokenization of each (already pinned) dataset version: the one its
    config's "tokenizer" names, else the version's only one. FAILED_PRECONDITION when a version is
    not tokenized, has several and none is named, or the datasets use different tokenizers."""
    wanted = trainer.config.get("tokenizer")
    wanted = wanted if isinstance(wanted, str) and wanted else ""
    tokens = await asyncio.gather(*(asyncio.to_thread(_tokenization, store, d, wanted) for d in trainer.datasets))
    if tokens:
        first = tokens[0]
        for t in tokens[1:]:
            if (t.tokenizer_object_key, t.tokenizer_digest) != (first.tokenizer_object_key, first.tokenizer_digest):
                raise FailedPrecondition(
                    f"the datasets of one job must share a tokenizer: {first.dataset_version} is tokenized with "
                    f"{first.tokenizer}, {t.dataset_version} with {t.tokenizer} ({t.tokenizer_digest[:19]}...); "
                    "tokenize them with the same --tokenizer")
    return dataclasses.replace(trainer, token_data=tuple(tokens))


def _tokenization(store: ObjectStore, name: str, wanted: str) -> TokenData:
    tenant, dataset, version = _VERSION.fullmatch(name).groups()  # type: ignore[union-attr]
    n = int(version)
    if not wanted:
        ids = _tokenizer_ids(store, tenant, dataset, n)
        if not ids:
            raise FailedPrecondition(f"{name} is not tokenized: run `pylon datasets tokenize "
                                     f"tenants/{tenant}/datasets/{dataset} {n}` first")
        if len(ids) > 1:
            raise FailedPrecondition(f"{name} has several tokenizations ({', '.join(ids)}): name one in the "
                                     "trainer's config as \"tokenizer\"")
        wanted = ids[0]
    try:
        doc = layout.read_tokenization(store, tenant, dataset, n, wanted)
    except NotFound:
        ids = _tokenizer_ids(store, tenant, dataset, n)
        have = f"it has {', '.join(ids)}" if ids else "it has none"
        raise FailedPrecondition(f"{name} is not tokenized with {wanted} ({have}): run `pylon datasets tokenize "
                                 f"tenants/{tenant}/datasets/{dataset} {n} --tokenizer {wanted}` first") from None
    return token_data(doc, name, wanted)


def _tokenizer_ids(store: ObjectStore, tenant: str, dataset: str, n: int) -> list[str]:
    """The tokenizer ids version ``n`` has a tokenization with (manifest names)."""
    prefix = layout.tokenization_key(tenant, dataset, n, "x")[:-len("x.json")]
    page = store.list(prefix, page_size=MAX_TOKENIZATIONS)
    return sorted(o.key[len(prefix):-len(".json")] for o in page.objects if o.key.endswith(".json"))


def token_data(doc: Mapping[str, Any], version: str, tokenizer: str) -> TokenData:
    """A tokenization manifest (ingest's) as what a trainer reads."""
    return TokenData(
        dataset_version=version, tokenization=str(doc.get("name") or f"{version}/tokenizations/{tokenizer}"),
        tokenizer=tokenizer, tokenizer_object_key=str(doc["tokenizer_object_key"]),
        tokenizer_digest=str(doc.get("tokenizer_digest", "")), index_object_key=str(doc["index_object_key"]),
        shard_prefix=str(doc["shard_prefix"]), total_tokens=int(doc.get("total_tokens", 0)),
        shard_count=int(doc.get("shard_count", 0)), vocab_size=int(doc.get("vocab_size", 0)),
        dtype=str(doc.get("dtype", "")), dataset_digest=str(doc.get("dataset_digest", "")))


def check_base_model_format(workload: Workload, uri: str, fmt: str) -> None:
    """INVALID_ARGUMENT unless a base model of registry format ``fmt`` is one ``workload`` takes."""
    if fmt not in workload.base_model_formats:
        takes = ", ".join(f.removeprefix("MODEL_FORMAT_") for f in workload.base_model_formats) or "none"
        raise InvalidArgument.field("spec.trainer.base_model", f"{uri} is {fmt.removeprefix('MODEL_FORMAT_')}; "
                                                               f"{workload.name} fine-tunes {takes}")


async def check_base_model_tokenizer(store: ObjectStore, version: str, files: Mapping[str, str],
                                     tokens: TokenData) -> None:
    """FAILED_PRECONDITION unless the base model's tokenizer.json tokenizes as the datasets'
    tokenizer does (``common.tokenizers.fingerprint``): a model fine-tuned on ids of another
    vocabulary learns nothing but noise."""
    key = files.get(TOKENIZER_FILE)
    if not key:
        raise FailedPrecondition(f"the base model {version} has no {TOKENIZER_FILE}; a fine-tune on tokenized "
                                 "datasets needs the model's tokenizer")
    model_fp, data_fp = await asyncio.gather(asyncio.to_thread(_fingerprint, store, key, f"{version}'s {TOKENIZER_FILE}"),
                                             asyncio.to_thread(_fingerprint, store, tokens.tokenizer_object_key,
                                                               f"tokenizer {tokens.tokenizer}"))
    if model_fp != data_fp:
        raise FailedPrecondition(f"the base model's tokenizer differs from the dataset's: {version} does not "
                                 f"tokenize as {tokens.tokenizer} (of {tokens.dataset_version}); tokenize the "
                                 "datasets with the model's tokenizer, or fine-tune a model that has theirs")


def _fingerprint(store: ObjectStore, key: str, what: str) -> str:
    try:
        if store.head(key).size > MAX_TOKENIZER_BYTES:
            raise FailedPrecondition(f"{what} is over {MAX_TOKENIZER_BYTES >> 20} MiB")
        return fingerprint(store.get(key))
    except NotFound:
        raise FailedPrecondition(f"{what} is missing from the object store") from None
    except NotATokenizer as e:
        raise FailedPrecondition(f"{what} is not a tokenizer ({e})") from None
