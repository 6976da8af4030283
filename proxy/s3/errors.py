"""S3 errors as exceptions that carry their code and status, rendered as S3 XML."""

from __future__ import annotations

from xml.sax.saxutils import escape

# Default HTTP status for each S3 error code we raise.
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidObjectState": 403,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KMS.DisabledException": 400,
    "KMS.NotFoundException": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "ObjectIntegrityError": 500,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "RequestTimeout": 400,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
    "BadGateway": 502,
}


class S3Error(Exception):
    """An error the client sees as an S3 XML error body with this code and status."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        resource: str = "",
        extra: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS.get(code, 400)
        self.resource = resource
        self.extra = extra or {}
        #: Response headers S3 sends with this error (ETag on 304, x-amz-delete-marker, ...).
        self.headers = headers or {}

    def to_xml(self, request_id: str, resource: str | None = None) -> bytes:
        """The S3 error document for this error."""
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            f"<Code>{escape(self.code)}</Code>",
            f"<Message>{escape(self.message)}</Message>",
        ]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{escape(value)}</{name}>")
        parts.append(f"<Resource>{escape(resource if resource is not None else self.resource)}</Resource>")
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
        parts.append("</Error>")
        return "".join(parts).encode()


def precondition_failed() -> S3Error:
    """S3's 412 for a condition (If-Match, If-None-Match, If-Unmodified-Since) that does not hold."""
    return S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
