"""What the server keeps on each request (who is asking, its id)."""

from __future__ import annotations

from aiohttp import web

from proxy.access.authorize import Caller

#: The identity (client name) of the request, set once its signature checked out.
IDENTITY = web.RequestKey("sealgate.identity", str)
#: Who is asking (client, address, TLS or not), set with IDENTITY.
CALLER = web.RequestKey("sealgate.caller", Caller)
#: The request id every response and log line carries.
REQUEST_ID = web.RequestKey("sealgate.request_id", str)
#: The access settings (bucket policy, public access block, ownership) of the buckets a request
#: touches, read while it was authorized.
BUCKET_ACCESS = web.RequestKey("sealgate.bucket_access", dict)
