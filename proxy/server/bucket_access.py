"""Bucket policies, public access blocks and ownership controls: the calls that set them, and
what they add to the authorization of every request on a bucket (`proxy.store.bucket_access`
keeps them; `proxy.access.authorize` decides)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import astuple

from aiohttp import web

from proxy.access.actions import Need
from proxy.access.authorize import BucketPolicies
from proxy.access.bucket_policy import MAX_POLICY_BYTES, MalformedPolicy, parse_bucket_policy
from proxy.s3.bucket_access import (
    acls_not_supported,
    check_ownership,
    ownership_xml,
    parse_ownership_controls,
    parse_public_access_block,
    policy_status_xml,
    public_acl_in,
    sets_acl,
)
from proxy.s3.errors import S3Error
from proxy.s3.routing import Op, Route
from proxy.s3.xml import XML_HEADERS
from proxy.server.state import BUCKET_ACCESS
from proxy.store import bucket_access as records
from proxy.store.bucket_access import BucketAccess
from proxy.store.gateway import Gateway

#: Operations that replace or remove a setting: decided even when a stored setting is broken,
#: so that it can be mended.
_MENDING = frozenset(
    {
        Op.PUT_BUCKET_POLICY,
        Op.DELETE_BUCKET_POLICY,
        Op.PUT_PUBLIC_ACCESS_BLOCK,
        Op.DELETE_PUBLIC_ACCESS_BLOCK,
        Op.PUT_BUCKET_OWNERSHIP_CONTROLS,
        Op.DELETE_BUCKET_OWNERSHIP_CONTROLS,
    }
)
#: Operations that may set an ACL (in headers, or in the body for the two ACL calls).
_SETTING_ACLS = frozenset(
    {Op.PUT_OBJECT, Op.COPY_OBJECT, Op.CREATE_MULTIPART_UPLOAD, Op.PUT_BUCKET_ACL, Op.PUT_OBJECT_ACL, Op.POST_OBJECT}
)
#: Operations before which there is no bucket whose settings could apply.
_NO_BUCKET = frozenset({Op.LIST_BUCKETS, Op.CREATE_BUCKET})


async def bucket_policies(gw: Gateway, request: web.Request, r: Route, wanted: Iterable[Need]) -> BucketPolicies:
    """The settings of every bucket a request touches (its own, a copy's source), kept on the
    request; ObjectIntegrityError when one is not authentic (fail closed)."""
    if r.operation in _NO_BUCKET:
        return {}
    names = sorted({need.bucket for need in wanted if need.bucket} | ({r.bucket} if r.bucket else set()))
    if len(names) == 1:  # the usual case, without gather's tasks
        held = {names[0]: await gw.access.settings(gw, names[0])}
    else:  # a copy's source and target: read at the same time
        held = dict(zip(names, await asyncio.gather(*(gw.access.settings(gw, n) for n in names)), strict=True))
    request[BUCKET_ACCESS] = held
    for name, access in held.items():
        if not access.exists:
            # As S3 answers anyone, authorized or not: whether a bucket name exists is no secret.
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, resource=name)
        if access.broken is not None and not (name == r.bucket and r.operation in _MENDING):
            raise S3Error(
                "ObjectIntegrityError",
                f"bucket {name}'s access settings on the backend are not authentic ({access.broken}); "
                "nothing is decided without them: put or delete the setting again",
                500,
            )
    return held_policies(request)


def held_policies(request: web.Request) -> BucketPolicies:
    """The bucket policies read while the request was authorized, for decisions made later
    (DeleteObjects decides key by key)."""
    held: Mapping[str, BucketAccess] = request.get(BUCKET_ACCESS) or {}
    return {name: (a.policy, a.pab.restrict_public_buckets) for name, a in held.items() if a.policy is not None}


def _access(request: web.Request, bucket: str) -> BucketAccess:
    held: Mapping[str, BucketAccess] = request.get(BUCKET_ACCESS) or {}
    return held.get(bucket, records.NONE)


def check_acls(
    request: web.Request, operation: Op, bucket: str | None, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> None:
    """What the bucket's ownership controls and public access block say of the ACL a request
    sets: BucketOwnerEnforced refuses ACLs (AccessControlListNotSupported), BlockPublicAcls
    refuses public ones (AccessDenied)."""
    if bucket is None or operation not in _SETTING_ACLS:
        return
    access = _access(request, bucket)
    asked = request.headers if headers is None else headers
    if access.ownership == "BucketOwnerEnforced" and sets_acl(asked, body):
        raise acls_not_supported()
    if access.pab.block_public_acls and public_acl_in(asked, body):
        raise S3Error("AccessDenied", "Access Denied: the bucket's public access block refuses public ACLs", 403)


async def _read_body(request: web.Request, limit: int) -> bytes:
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        code = "MalformedPolicy" if limit == MAX_POLICY_BYTES else "MaxMessageLengthExceeded"
        raise S3Error(code, "Your request was too big.", 400)
    return data


def _existing(request: web.Request, bucket: str) -> BucketAccess:
    access = _access(request, bucket)
    if not access.exists:
        raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, resource=bucket)
    return access


async def bucket_policy(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """Get/Put/DeleteBucketPolicy. A policy is parsed and checked before it is stored; one that
    is public (allows everyone, not only some addresses) is refused under BlockPublicPolicy."""
    if request.method == "GET":
        policy = _existing(request, bucket).policy
        if policy is None:
            raise S3Error("NoSuchBucketPolicy", "The bucket policy does not exist", 404, resource=bucket)
        return web.Response(status=200, body=policy.text.encode(), headers={"Content-Type": "application/json"})
    if request.method == "DELETE":
        await records.remove(gw, bucket, records.POLICY)
        return web.Response(status=204)
    raw = await _read_body(request, MAX_POLICY_BYTES)
    try:
        text = raw.decode("utf-8")
        policy = parse_bucket_policy(bucket, text, lambda name: gw.config.client_by_name(name) is not None)
    except UnicodeDecodeError:
        raise S3Error("MalformedPolicy", "Policies must be UTF-8 JSON", 400) from None
    except MalformedPolicy as exc:
        raise S3Error("MalformedPolicy", str(exc), 400) from None
    if policy.public and _access(request, bucket).pab.block_public_policy:
        raise S3Error("AccessDenied", "Access Denied: the bucket's public access block refuses public policies", 403)
    await records.store(gw, bucket, records.POLICY, raw)
    return web.Response(status=204)


async def bucket_policy_status(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """GetBucketPolicyStatus: whether the bucket's policy is public."""
    policy = _existing(request, bucket).policy
    if policy is None:
        raise S3Error("NoSuchBucketPolicy", "The bucket policy does not exist", 404, resource=bucket)
    return web.Response(status=200, body=policy_status_xml(policy.public), headers=XML_HEADERS)


async def public_access_block(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """Get/Put/DeletePublicAccessBlock."""
    if request.method == "GET":
        block = _existing(request, bucket).public_access_block
        if block is None:
            raise S3Error(
                "NoSuchPublicAccessBlockConfiguration", "The public access block configuration was not found", 404
            )
        return web.Response(status=200, body=block.to_xml(), headers=XML_HEADERS)
    if request.method == "DELETE":
        await records.remove(gw, bucket, records.PUBLIC_ACCESS_BLOCK)
        return web.Response(status=204)
    block = parse_public_access_block(await _read_body(request, 64 * 1024))
    await records.store(gw, bucket, records.PUBLIC_ACCESS_BLOCK, _json_flags(astuple(block)))
    return web.Response(status=200)


def _json_flags(flags: tuple[bool, ...]) -> bytes:
    return ("[" + ",".join("true" if f else "false" for f in flags) + "]").encode()


async def ownership_controls(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """Get/Put/DeleteBucketOwnershipControls."""
    if request.method == "GET":
        ownership = _existing(request, bucket).ownership
        if ownership is None:
            raise S3Error("OwnershipControlsNotFoundError", "The bucket ownership controls were not found", 404)
        return web.Response(status=200, body=ownership_xml(ownership), headers=XML_HEADERS)
    if request.method == "DELETE":
        await records.remove(gw, bucket, records.OWNERSHIP)
        return web.Response(status=204)
    value = parse_ownership_controls(await _read_body(request, 64 * 1024))
    await records.store(gw, bucket, records.OWNERSHIP, value.encode())
    return web.Response(status=200)


def asked_ownership(request: web.Request) -> str | None:
    """The ObjectOwnership a CreateBucket asks for (``x-amz-object-ownership``), checked."""
    value = request.headers.get("x-amz-object-ownership")
    return None if value is None else check_ownership(value)


async def created(gw: Gateway, bucket: str, ownership: str | None) -> None:
    """After CreateBucket: store the ObjectOwnership it asked for."""
    if ownership is not None:
        await records.store(gw, bucket, records.OWNERSHIP, ownership.encode())
    gw.access.forget(bucket)


#: The handler of each operation on these settings.
HANDLERS: Mapping[Op, Callable[[Gateway, web.Request, str], Awaitable[web.StreamResponse]]] = {
    Op.GET_BUCKET_POLICY: bucket_policy,
    Op.PUT_BUCKET_POLICY: bucket_policy,
    Op.DELETE_BUCKET_POLICY: bucket_policy,
    Op.GET_BUCKET_POLICY_STATUS: bucket_policy_status,
    Op.GET_PUBLIC_ACCESS_BLOCK: public_access_block,
    Op.PUT_PUBLIC_ACCESS_BLOCK: public_access_block,
    Op.DELETE_PUBLIC_ACCESS_BLOCK: public_access_block,
    Op.GET_BUCKET_OWNERSHIP_CONTROLS: ownership_controls,
    Op.PUT_BUCKET_OWNERSHIP_CONTROLS: ownership_controls,
    Op.DELETE_BUCKET_OWNERSHIP_CONTROLS: ownership_controls,
}
