"""The S3-compatible object store the shipper writes to, through boto3.

Credentials, region and endpoint come from boto3's standard chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``~/.aws/config`` and
``~/.aws/credentials`` of the tracecap user, instance roles), ``--endpoint-url`` over them.
Every failure of the store reaches the shipper as one exception, ``StoreError``, which it retries
with backoff; nothing here retries for long, so a store that is down costs one short attempt.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

#: Uploads of this size or more go up in parts of this size (S3's minimum part is 5 MiB).
MULTIPART_BYTES = 8 << 20
#: Connect and read timeouts (s): a store that is down is noticed quickly, and the shipper
#: (not botocore) decides when to try again.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
#: botocore's own attempts per request (its "standard" mode retries throttling and 5xx).
REQUEST_ATTEMPTS = 3


class StoreError(RuntimeError):
    """The store did not take (or give) an object: down, refusing, or misconfigured."""


class ObjectRefused(StoreError):
    """The store refused this one object as malformed (HTTP 400: a key or metadata it does not
    accept): trying again cannot help, and must not hold up the others."""


class Store(Protocol):
    """What the shipper needs of a store (a dict-backed fake in unit tests)."""

    def put_file(self, key: str, fileobj: BinaryIO, metadata: dict[str, str]) -> None: ...

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None: ...

    def delete(self, key: str) -> None: ...


class S3Store:
    """A bucket of an S3-compatible store.

    ``request_checksum_calculation="when_required"``: since botocore 1.36 every upload carries a
    CRC32 trailer by default (aws-chunked encoding), which stores that predate it (Swift's s3api
    2.30, older MinIO and Ceph) refuse; the integrity check that matters is the sha256 in the
    metadata, which the shipper computes from the bytes it sent.
    """

    def __init__(self, bucket: str, endpoint_url: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES,
            multipart_chunksize=MULTIPART_BYTES,
            use_threads=True,
            max_concurrency=4,
        )

    @staticmethod
    def _error(key: str, exc: BaseException) -> StoreError:
        response = getattr(exc, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        cls = ObjectRefused if status == 400 else StoreError
        return cls(f"{key}: {exc}")

    def _errors(self) -> tuple[type[BaseException], ...]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, Boto3Error, OSError)

    def put_file(self, key: str, fileobj: BinaryIO, metadata: dict[str, str]) -> None:
        try:
            self._client.upload_fileobj(
                fileobj,
                self.bucket,
                key,
                ExtraArgs={"Metadata": metadata},
                Config=self._transfer,
            )
        except self._errors() as exc:
            raise self._error(key, exc) from exc

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata)
        except self._errors() as exc:
            raise self._error(key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except self._errors() as exc:
            raise self._error(key, exc) from exc
