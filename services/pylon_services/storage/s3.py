"""S3 ``ObjectStore`` (AWS S3, MinIO, SeaweedFS) on one thread-safe boto3 client.

Create-only and compare-and-swap use S3 conditional writes (``If-None-Match: *`` and
``If-Match: <etag>``), so the server decides races; nothing here reads then writes. Keys are
stored under an optional ``prefix`` inside the bucket; callers never see it.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import boto3
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from pylon_services.common.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from pylon_services.storage.base import (
    CompletedPart,
    EtagMismatch,
    ListPage,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    PagedListing,
)
from pylon_services.storage.local import (
    normalize_range,
    validate_key,
    validate_metadata,
)

T = TypeVar("T")

MAX_COPY_OBJECT_BYTES = 5 * 1024**3  # larger sources need a multipart (managed) copy
_STREAM_CHUNK = 1 << 20
_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_BAD_REQUEST = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "EntityTooLarge",
                "InvalidArgument", "InvalidRequest", "KeyTooLongError", "MetadataTooLarge"}  # fmt: skip
_DENIED = {"AccessDenied", "AllAccessDisabled"}
_UNAUTHENTICATED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


def _etag(value: str) -> str:
    return value.strip().strip('"')


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _latest_parts(entries: list[dict[str, Any]]) -> list[CompletedPart]:
    """One part per number from ListParts entries.

    SeaweedFS lists every upload of a re-sent part number (AWS lists only the last). The newest
    one wins; when LastModified (1 s resolution) cannot tell, the number is left out, so a
    resuming client simply uploads that part again.
    """
    by_number: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        by_number.setdefault(int(entry["PartNumber"]), []).append(entry)
    parts = []
    for number, candidates in sorted(by_number.items()):
        candidates.sort(key=lambda e: e["LastModified"])
        newest = candidates[-1]
        if len(candidates) > 1 and candidates[-2]["LastModified"] == newest["LastModified"]:
            continue
        parts.append(CompletedPart(number, _etag(newest["ETag"])))
    return parts


def _unpickle(bucket: str, prefix: str, endpoint_url: str | None, access_key: str | None, secret_key: str | None,
              region: str, max_pool_connections: int, public_endpoint_url: str | None) -> S3ObjectStore:
    """Rebuild a pickled ``S3ObjectStore`` (its keyword-only arguments cannot ride in a reduce tuple)."""
    return S3ObjectStore(bucket, prefix, endpoint_url, access_key, secret_key, region,
                         max_pool_connections=max_pool_connections, public_endpoint_url=public_endpoint_url)


class S3ObjectStore(PagedListing):
    """``ObjectStore`` over one bucket (and optional key prefix); share one instance freely."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        *,
        max_pool_connections: int = 32,
        public_endpoint_url: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._max_pool_connections = max_pool_connections
        self.public_endpoint_url = public_endpoint_url
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # MinIO/SeaweedFS have no virtual-host buckets
            max_pool_connections=max_pool_connections,
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            # Only checksum when an operation requires it: third-party servers differ in their
            # support for the aws-chunked trailing checksums newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Sessions are not thread-safe, clients are: build one client here and share it.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        # Presigned URLs are for clients elsewhere (the host, behind compose's port mapping): sign
        # them for the endpoint those clients dial. SigV4 signs the Host header, so a URL signed
        # for one endpoint cannot be rewritten to another afterwards. Signing needs no connection.
        self._presigner = self._client if not public_endpoint_url else boto3.session.Session().client(
            "s3",
            endpoint_url=public_endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self._transfer = TransferConfig(multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2)

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def __reduce__(self) -> tuple[Callable[..., S3ObjectStore], tuple[Any, ...]]:
        """Pickle as constructor arguments (boto3 clients do not pickle), e.g. for Ray tasks."""
        args = (self.bucket, self.prefix, self.endpoint_url, self._access_key, self._secret_key, self.region,
                self._max_pool_connections, self.public_endpoint_url)
        return (_unpickle, args)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (idempotent; safe when several callers race)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _error_code(err) not in {"404", "NoSuchBucket", "NotFound"}:
                self._raise(err, f"bucket {self.bucket!r}")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as err:
            if _error_code(err) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                self._raise(err, f"bucket {self.bucket!r}")

    # -- writes ---------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """PutObject, conditional when asked; the server settles races between writers."""
        if if_none_match and if_match is not None:
            raise InvalidArgument.field("if_match", "cannot be combined with if_none_match")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Body": data,
                                  "Metadata": validate_metadata(metadata)}  # fmt: skip
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{_etag(if_match)}"'
        conditional = if_none_match or if_match is not None
        try:
            response = self._client.put_object(**kwargs)
        except ClientError as err:
            if conditional and self._lost_own_retry(err, key, data):
                return self.head(key)
            self._raise(err, key, if_none_match=if_none_match, if_match=if_match is not None)
        except BotoCoreError as err:
            self._raise_transport(err, key)
        return ObjectInfo(key, len(data), _etag(response["ETag"]), dict(kwargs["Metadata"]))

    def put_file(self, key: str, path: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Managed upload: streamed, multipart (in parallel) above 16 MiB."""
        extra = {"Metadata": validate_metadata(metadata)}
        self._call(key, lambda: self._client.upload_file(
            str(path), self.bucket, self._full(key), ExtraArgs=extra, Config=self._transfer))  # fmt: skip
        return self.head(key)

    def delete(self, key: str) -> None:
        self._call(key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._full(key)))

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> ObjectInfo:
        """Server-side copy keeping metadata; create-only is atomic up to the 5 GiB CopyObject limit.

        Larger sources go through a managed multipart copy, whose create-only check is a head
        before copying (not atomic).
        """
        source = self.head(src)
        full_dst = self._full(dst)
        copy_source = {"Bucket": self.bucket, "Key": self._full(src)}
        if source.size > MAX_COPY_OBJECT_BYTES:
            if if_none_match and self.exists(dst):
                raise ObjectExists(f"object {dst!r} already exists")
            self._call(dst, lambda: self._client.copy(copy_source, self.bucket, full_dst, Config=self._transfer))
            return self.head(dst)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full_dst, "CopySource": copy_source,
                                  "MetadataDirective": "COPY"}  # fmt: skip
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        response = self._call(dst, lambda: self._client.copy_object(**kwargs), if_none_match=if_none_match)
        etag = _etag(response["CopyObjectResult"]["ETag"])
        return ObjectInfo(dst, source.size, etag, dict(source.metadata))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """GetObject, ranged when asked; a range past the end yields what exists (maybe b'')."""
        first, last = normalize_range(start, end)
        if last is not None and last <= first:
            self.head(key)  # still report a missing key
            return b""
        body = self._open_body(key, first, last)
        if body is None:
            return b""
        try:
            return bytes(body.read())
        finally:
            body.close()

    def iter_chunks(self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0) -> Iterator[bytes]:
        """Send the GET now (so a missing key raises here), then stream the body lazily."""
        if chunk_size <= 0:
            raise InvalidArgument.field("chunk_size", "must be > 0")
        first, _ = normalize_range(offset, None)
        body = self._open_body(key, first, None)

        def chunks() -> Iterator[bytes]:
            if body is None:
                return
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    def get_file(self, key: str, path: str) -> ObjectInfo:
        """Stream one GET to a temp file beside ``path`` and rename; the info matches the bytes."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
        response = self._call(key, lambda: self._client.get_object(Bucket=self.bucket, Key=self._full(key)))
        body = response["Body"]  # StreamingBody; its context manager yields the raw stream
        try:
            with open(temp, "wb") as out:
                out.writelines(body.iter_chunks(_STREAM_CHUNK))
            os.replace(temp, target)
        finally:
            body.close()
            temp.unlink(missing_ok=True)
        return self._info(key, response)

    def head(self, key: str) -> ObjectInfo:
        response = self._call(key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._full(key)))
        return self._info(key, response)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str, *, page_size: int = 1000, page_token: str | None = None) -> ListPage:
        """ListObjectsV2 from just after ``page_token`` (the last key of the previous page).

        Entries carry key, size and etag; S3 listings have no user metadata (use ``head``).
        """
        if page_size <= 0:
            raise InvalidArgument.field("page_size", "must be > 0")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                  "MaxKeys": min(page_size, 1000)}  # fmt: skip
        if page_token:
            kwargs["StartAfter"] = self._full(page_token)
        response = self._call(prefix, lambda: self._client.list_objects_v2(**kwargs))
        objects = [
            ObjectInfo(item["Key"][len(self.prefix):], int(item["Size"]), _etag(item["ETag"]))
            for item in response.get("Contents", [])
        ]
        more = bool(response.get("IsTruncated")) and bool(objects)
        return ListPage(objects, objects[-1].key if more else None)

    def presign(self, method: str, key: str, *, expires_s: int = 3600, upload_id: str | None = None,
                part_number: int | None = None) -> str | None:
        """A SigV4 query-string URL for GET, PUT, or PUT of one multipart part."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        verb = method.upper()
        if verb == "GET" and upload_id is None:
            operation = "get_object"
        elif verb == "PUT" and upload_id is None and part_number is None:
            operation = "put_object"
        elif verb == "PUT" and upload_id is not None and part_number is not None:
            operation = "upload_part"
            params.update(UploadId=upload_id, PartNumber=part_number)
        else:
            raise InvalidArgument.field("method", "must be GET, PUT, or PUT with upload_id and part_number")
        return str(self._presigner.generate_presigned_url(operation, Params=params, ExpiresIn=expires_s))

    def presign_put(self, key: str, *, expires_s: int = 3600, sha256: str = "") -> tuple[str, dict[str, str]] | None:
        # Parameters that map to headers become signed headers: a PUT without them, or with
        # other values, fails the signature check (the S3 API's rule; SeaweedFS is checked by
        # tests/integration/test_storage_contract.py).
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "IfNoneMatch": "*"}
        headers = {"If-None-Match": "*"}
        if sha256:
            b64 = base64.b64encode(bytes.fromhex(sha256.split(":", 1)[1])).decode()
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = b64
        url = self._presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_s)
        return str(url), headers

    def stored_sha256(self, key: str) -> str | None:
        response = self._call(key, lambda: self._client.head_object(
            Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"))  # fmt: skip
        value = response.get("ChecksumSHA256") or ""
        if not value or "-" in value or response.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None  # none kept, or a multipart upload's checksum of part checksums
        return "sha256:" + base64.b64decode(value).hex()

    # -- multipart ------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        response = self._call(key, lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=self._full(key)))  # fmt: skip
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> CompletedPart:
        if not 1 <= part_number <= 10_000:
            raise InvalidArgument.field("part_number", "must be in 1..10000")
        response = self._call(key, lambda: self._client.upload_part(
            Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, PartNumber=part_number, Body=data))  # fmt: skip
        return CompletedPart(part_number, _etag(response["ETag"]))

    def list_parts(self, key: str, upload_id: str) -> builtins.list[CompletedPart]:
        """Every uploaded part, following ListParts pages, by part number."""
        entries: builtins.list[dict[str, Any]] = []
        marker = 0
        while True:
            page = {"Bucket": self.bucket, "Key": self._full(key), "UploadId": upload_id, "PartNumberMarker": marker}
            response = self._call(key, functools.partial(self._client.list_parts, **page))
            entries += response.get("Parts", [])
            if not response.get("IsTruncated"):
                return _latest_parts(entries)
            marker = int(response["NextPartNumberMarker"])

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[CompletedPart]) -> ObjectInfo:
        if not parts:
            raise InvalidArgument.field("parts", "at least one part is required")
        listing = [{"PartNumber": p.part_number, "ETag": f'"{_etag(p.etag)}"'} for p in parts]
        self._call(key, lambda: self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
            MultipartUpload={"Parts": listing}))  # fmt: skip
        return self.head(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort; an unknown or finished upload is fine (idempotent, like delete)."""
        try:
            self._call(key, lambda: self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id))  # fmt: skip
        except ObjectNotFound:
            pass

    # -- internals ------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _info(self, key: str, response: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(key, int(response["ContentLength"]), _etag(response["ETag"]),
                          dict(response.get("Metadata", {})))  # fmt: skip

    def _open_body(self, key: str, first: int, last: int | None) -> Any:
        """GetObject from ``first`` (to ``last``, exclusive); None when the range is past the end."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if first or last is not None:
            kwargs["Range"] = f"bytes={first}-{'' if last is None else last - 1}"
        try:
            return self._client.get_object(**kwargs)["Body"]
        except ClientError as err:
            if _error_code(err) == "InvalidRange":
                return None
            self._raise(err, key)
        except BotoCoreError as err:
            self._raise_transport(err, key)

    def _lost_own_retry(self, err: ClientError, key: str, data: bytes) -> bool:
        """True when a conditional put failed only because botocore retried a write that had
        already landed (the response was lost): the stored object is then exactly ours."""
        if err.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) == 0:
            return False
        try:
            return self.head(key).etag == hashlib.md5(data).hexdigest()
        except ObjectNotFound:
            return False

    def _call(self, key: str, action: Callable[[], T], *, if_none_match: bool = False) -> T:
        """Run one boto3 call, turning its errors into the platform's typed errors."""
        try:
            return action()
        except ClientError as err:
            self._raise(err, key, if_none_match=if_none_match)
        except BotoCoreError as err:
            self._raise_transport(err, key)
        except (S3UploadFailedError, S3TransferFailedError) as err:
            # Managed transfers wrap the real error; map the cause when it is one we know.
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ClientError):
                self._raise(cause, key)
            if isinstance(cause, BotoCoreError):
                self._raise_transport(cause, key)
            raise Internal(f"S3 transfer of {key!r} failed: {err}") from err

    def _raise(self, err: ClientError, key: str, *, if_none_match: bool = False, if_match: bool = False) -> NoReturn:
        code = _error_code(err)
        if code in _PRECONDITION and if_none_match:
            raise ObjectExists(f"object {key!r} already exists") from err
        if (code in _PRECONDITION or code in _NOT_FOUND) and if_match:
            raise EtagMismatch(f"object {key!r} does not have the expected etag") from err
        if code == "NoSuchUpload":
            raise ObjectNotFound(f"no multipart upload for key {key!r}") from err
        if code in _NOT_FOUND:
            raise ObjectNotFound(f"object {key!r} not found") from err
        if code == "NoSuchBucket":
            raise FailedPrecondition(f"bucket {self.bucket!r} does not exist (call ensure_bucket)") from err
        if code in _BAD_REQUEST:
            raise InvalidArgument(f"{key!r}: {err.response['Error'].get('Message', code)}") from err
        if code in _DENIED:
            raise PermissionDenied(f"access to {key!r} in bucket {self.bucket!r} denied") from err
        if code in _UNAUTHENTICATED:
            raise Unauthenticated(f"S3 rejected the credentials ({code})") from err
        if code in _UNAVAILABLE:
            raise Unavailable(f"S3 unavailable ({code}) for {key!r}") from err
        raise Internal(f"S3 error {code or 'unknown'} for {key!r}: {err}") from err

    def _raise_transport(self, err: BotoCoreError, key: str) -> NoReturn:
        if isinstance(err, BotoConnectionError):
            raise Unavailable(f"cannot reach S3 at {self.endpoint_url or 'AWS'}: {err}") from err
        raise Internal(f"S3 client error for {key!r}: {err}") from err
