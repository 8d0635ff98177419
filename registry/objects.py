"""Object storage for remotes: an S3-compatible bucket (boto3) or a plain folder.

Both offer the few operations a remote needs — list, get, put, and a
conditional create that succeeds for exactly one of many concurrent writers —
and turn every failure into a one-line `RemoteError` that names the remote and
says what to do. Credentials come from the standard AWS chain (environment,
~/.aws, profiles) and appear in no message.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from graft.registry.errors import GraftError
from graft.registry.fsutil import atomic_writer, fsync_dir

OnBytes = Callable[[int], None]
MULTIPART_BYTES = 64 * 1024 * 1024  # larger uploads go in parallel parts
READ_BYTES = 1024 * 1024  # a download is written in pieces of this size
READ_ATTEMPTS = 3


class RemoteError(GraftError, OSError):
    """A remote that cannot be reached, refuses us, or holds something wrong."""


class ByteCounter:
    """Bytes moved so far by several threads, reported as (done, total)."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._on_progress = on_progress

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._on_progress:
                self._on_progress(self.done, self.total)


class Objects(Protocol):
    """What a remote is made of: named, immutable objects under one prefix."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes; None when there is none."""
        ...

    def download(self, key: str, out: BinaryIO, on_bytes: OnBytes) -> None: ...

    def upload(self, key: str, data: BinaryIO, size: int, on_bytes: OnBytes) -> None:
        """Store `size` bytes read from `data` under `key` (replacing any object)."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` unless an object is there: False then."""
        ...


class FolderObjects:
    """A remote on a (shared) file system: objects are files, written atomically."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        if not root.is_dir():
            raise RemoteError(
                f"remote {name!r}: folder {root} does not exist",
                "create it, or fix the URL with `graft remote add --force`",
            )

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for folder, _, files in os.walk(base):
            for name in files:
                if not name.startswith(".tmp-"):
                    path = Path(folder) / name
                    yield path.relative_to(self.root).as_posix(), path.stat().st_size

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, key: str, out: BinaryIO, on_bytes: OnBytes) -> None:
        try:
            with open(self._path(key), "rb") as f:
                while chunk := f.read(MULTIPART_BYTES // 8):
                    out.write(chunk)
                    on_bytes(len(chunk))
        except FileNotFoundError as e:
            raise RemoteError(
                f"remote {self.name!r} lacks {key}", "the remote is damaged: push it again"
            ) from e

    def upload(self, key: str, data: BinaryIO, size: int, on_bytes: OnBytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(target) as out:
            while chunk := data.read(MULTIPART_BYTES // 8):
                out.write(chunk)
                on_bytes(len(chunk))

    def create(self, key: str, data: bytes) -> bool:
        """A complete temp file is hard-linked to the key: the link fails when
        the key exists, so exactly one of several writers gets it."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(target.parent)
        return True


class S3Objects:
    """A bucket and prefix on any S3-compatible server, through boto3."""

    def __init__(self, name: str, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},  # throttling, dropped connections
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            # Every blob pulled is hashed against its key, the stronger check:
            # botocore's CRC32 of each response would only cost CPU.
            response_checksum_validation="when_required",
        )
        try:
            self.client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or None, config=config
            )
        except Exception as e:  # botocore's configuration errors share no base class
            raise RemoteError(
                f"remote {name!r}: cannot set up an S3 client ({type(e).__name__})",
                "check AWS_REGION / AWS_ENDPOINT_URL and the remote's --endpoint-url",
            ) from None
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES,
            multipart_chunksize=MULTIPART_BYTES // 4,
            max_concurrency=8,
        )

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with self._errors(prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix) :], obj["Size"]

    def get(self, key: str) -> bytes | None:
        with self._errors(key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
            except self.client.exceptions.NoSuchKey:
                return None
            return bytes(body.read())

    def download(self, key: str, out: BinaryIO, on_bytes: OnBytes) -> None:
        """One GET streamed into `out` (the callers download many objects at once;
        a transfer manager's threads per object cost more CPU than they gain). A
        body cut off mid-stream is fetched again: botocore retries only requests."""
        from botocore.exceptions import IncompleteReadError, ResponseStreamingError

        origin = out.tell()
        with self._errors(key):
            for attempt in range(1, READ_ATTEMPTS + 1):
                written = 0
                try:
                    response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
                    for chunk in response["Body"].iter_chunks(READ_BYTES):
                        out.write(chunk)
                        written += len(chunk)
                        on_bytes(len(chunk))
                    return
                except (IncompleteReadError, ResponseStreamingError):
                    if attempt == READ_ATTEMPTS:
                        raise
                    on_bytes(-written)
                    out.seek(origin)
                    out.truncate()

    def upload(self, key: str, data: BinaryIO, size: int, on_bytes: OnBytes) -> None:
        with self._errors(key):
            self.client.upload_fileobj(
                data, self.bucket, self.prefix + key, Callback=on_bytes, Config=self.transfer
            )

    def create(self, key: str, data: bytes) -> bool:
        with self._errors(key):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*"
                )
            except self.client.exceptions.ClientError as e:
                if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    return False
                raise
        return True

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """botocore's exceptions as one line naming the remote (never a credential)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = f"remote {self.name!r} (s3://{self.bucket}/{self.prefix})"
        try:
            yield
        except NoCredentialsError:
            raise RemoteError(
                f"{where}: no credentials",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws",
            ) from None
        except EndpointConnectionError:
            raise RemoteError(
                f"{where}: cannot reach the server",
                "check that it is up and the remote's --endpoint-url",
            ) from None
        except (ClientError, S3UploadFailedError) as e:
            code = _code(e) if isinstance(e, ClientError) else _upload_code(e)
            raise RemoteError(f"{where}: {key}: {code}", _hint(code)) from None
        except BotoCoreError as e:
            raise RemoteError(
                f"{where}: {type(e).__name__}", "check the server and retry"
            ) from None


def _code(e: BaseException) -> str:
    response = getattr(e, "response", {}) or {}
    return str(response.get("Error", {}).get("Code") or "error")


def _upload_code(e: Exception) -> str:
    cause = e.__context__ or e.__cause__
    return _code(cause) if cause is not None else "upload failed"


def _hint(code: str) -> str:
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
        return "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) for this bucket"
    if code in ("NoSuchBucket", "404"):
        return "create the bucket, or fix the URL with `graft remote add --force`"
    return "check the server and retry; an interrupted push or pull resumes where it stopped"
