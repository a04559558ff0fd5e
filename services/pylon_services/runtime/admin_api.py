"""AdminService: API key management (transport layer over ApiKeyStore)."""

from __future__ import annotations

import re

import grpc

from pylon.admin.v1 import admin_pb2, admin_pb2_grpc
from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import check_description
from pylon_services.common.names import check_tenant
from pylon_services.runtime.auth import ApiKeyStore, StoredKey
from pylon_services.runtime.context import principal
from pylon_services.runtime.protoconv import page_size, ts

_ROLE_TO_PROTO = {"viewer": admin_pb2.ROLE_VIEWER, "editor": admin_pb2.ROLE_EDITOR,
                  "maintainer": admin_pb2.ROLE_MAINTAINER, "admin": admin_pb2.ROLE_ADMIN}
_PROTO_TO_ROLE = {v: k for k, v in _ROLE_TO_PROTO.items()}
_KEY_ID = re.compile(r"[0-9a-f]{1,64}")  # page tokens are key ids (hex)


def _key(k: StoredKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(name=f"apiKeys/{k.key_id}", tenant=k.tenant, role=_ROLE_TO_PROTO[k.role],
                            description=k.description, create_time=ts(k.create_time))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, keys: ApiKeyStore) -> None:
        self._keys = keys

    async def CreateApiKey(self, request: admin_pb2.CreateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> admin_pb2.CreateApiKeyResponse:
        if request.role not in _PROTO_TO_ROLE:
            raise InvalidArgument.field("role", "must be ROLE_VIEWER, ROLE_EDITOR, ROLE_MAINTAINER or ROLE_ADMIN")
        check_description("description", request.description)
        key, token = await self._keys.create(request.tenant, _PROTO_TO_ROLE[request.role], request.description)
        return admin_pb2.CreateApiKeyResponse(api_key=_key(key), token=token)

    async def ListApiKeys(self, request: admin_pb2.ListApiKeysRequest,
                          context: grpc.aio.ServicerContext) -> admin_pb2.ListApiKeysResponse:
        size = page_size(request.page_size)
        if request.page_token and not _KEY_ID.fullmatch(request.page_token):
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        if request.tenant:
            check_tenant("tenant", request.tenant)
        # Page over all keys and filter the page: the token then always marks how far the scan
        # got, so keys of the tenant further on are never skipped (a page may come back short).
        keys = await self._keys.list_keys("", size, request.page_token)
        token = keys[-1].key_id if len(keys) == size else ""
        mine = [k for k in keys if not request.tenant or k.tenant == request.tenant]
        return admin_pb2.ListApiKeysResponse(api_keys=[_key(k) for k in mine], next_page_token=token)

    async def DeleteApiKey(self, request: admin_pb2.DeleteApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> admin_pb2.DeleteApiKeyResponse:
        if not (request.name.startswith("apiKeys/") and _KEY_ID.fullmatch(request.name[8:])):
            raise InvalidArgument.field("name", "must be of the form apiKeys/{key_id} (hex digits)")
        await self._keys.delete(request.name.split("/", 1)[1])
        return admin_pb2.DeleteApiKeyResponse()

    async def WhoAmI(self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext) -> admin_pb2.WhoAmIResponse:
        p = principal()
        return admin_pb2.WhoAmIResponse(tenant=p.tenant, role=_ROLE_TO_PROTO[p.role], api_key=f"apiKeys/{p.key_id}")
