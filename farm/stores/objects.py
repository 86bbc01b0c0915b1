"""Images and records in S3-compatible storage (any endpoint boto3 can reach)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from farm import metrics
from farm.errors import NotFound, ServiceUnavailable
from farm.settings import Settings

# boto3 ships no type information (and no stub package is installed): its clients are Any.
S3Client = Any


def s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client for the configured endpoint (path-style: works with any store)."""
    settings.require_endpoints("s3_endpoint")
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=settings.s3_region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


class ObjectStore:
    """Put and get objects in the farm's bucket."""

    def __init__(self, client: S3Client, bucket: str):
        self.client = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(s3_client(settings), settings.s3_bucket)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise ServiceUnavailable(f"s3: bucket {self.bucket}: {e}") from e
            self.client.create_bucket(Bucket=self.bucket)
        except BotoCoreError as e:
            raise ServiceUnavailable(f"s3: {e}") from e

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=metadata or {},
            )
        except (ClientError, BotoCoreError) as e:
            raise ServiceUnavailable(f"s3: cannot put {key}: {e}") from e
        metrics.uploaded(content_type, len(data))

    def put_file(self, key: str, path: str | Path, content_type: str) -> None:
        """A file of any size (multipart above boto3's threshold), never read whole."""
        try:
            self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
            )
        except (ClientError, BotoCoreError) as e:
            raise ServiceUnavailable(f"s3: cannot put {key}: {e}") from e
        metrics.uploaded(content_type, Path(path).stat().st_size)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise ServiceUnavailable(f"s3: cannot delete {key}: {e}") from e

    def get(self, key: str) -> bytes:
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return data
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise NotFound(f"s3://{self.bucket}/{key} does not exist") from e
            raise ServiceUnavailable(f"s3: cannot get {key}: {e}") from e
        except BotoCoreError as e:
            raise ServiceUnavailable(f"s3: cannot get {key}: {e}") from e

    def head(self, key: str) -> dict[str, str] | None:
        """The object's user metadata, or None if it does not exist."""
        try:
            meta: dict[str, str] = self.client.head_object(Bucket=self.bucket, Key=key).get(
                "Metadata", {}
            )
            return meta
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ServiceUnavailable(f"s3: cannot head {key}: {e}") from e
        except BotoCoreError as e:
            raise ServiceUnavailable(f"s3: cannot head {key}: {e}") from e

    def list_keys(self, prefix: str) -> set[str]:
        """Every key under ``prefix`` (paginated listing)."""
        found: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                found.update(o["Key"] for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise ServiceUnavailable(f"s3: cannot list {prefix}: {e}") from e
        return found

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def presigned_url(self, key: str, expires_s: int = 900) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
