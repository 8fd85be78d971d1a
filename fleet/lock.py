"""Per-site fleet locks, kept on the stacks' own backend (a directory of the file backend, or
objects in the S3 bucket), so that two fleet commands changing the same sites cannot overlap
wherever they run.

A lock is created only if absent (O_EXCL; S3 ``If-None-Match: *``) and names its owner, host
and process, and a lease that a heartbeat renews. A lock whose lease ran out, or whose owner
process on this host is gone, is stale: the next command takes it over and recovers the site's
stack (a dead run may have left the stack locked with pending operations).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

# A lock whose owner died on another machine (a lost CI runner) frees itself after the lease;
# on the same machine a dead owner is seen at once.
LEASE_S = 600
RENEW_S = 120
PREFIX = ".edgefleet-fleet/locks"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(record: dict[str, Any], now: float, host: str) -> bool:
    if float(record.get("expires", 0)) < now:
        return True
    return record.get("host") == host and not _alive(int(record.get("pid", 0)))


class Store(ABC):
    """Create-if-absent, read, overwrite and delete small JSON records under one prefix."""

    @abstractmethod
    def create(self, key: str, record: dict) -> bool: ...
    @abstractmethod
    def read(self, key: str) -> dict | None: ...
    @abstractmethod
    def write(self, key: str, record: dict) -> None: ...
    @abstractmethod
    def delete(self, key: str) -> None: ...


class FileStore(Store):
    def __init__(self, root: Path):
        self.root = root / PREFIX

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def create(self, key: str, record: dict) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return True

    def read(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def write(self, key: str, record: dict) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store(Store):
    """The bucket of an ``s3://bucket?endpoint=...&disableSSL=true&s3ForcePathStyle=true&region=...``
    backend URL (the query as the Pulumi CLI reads it)."""

    def __init__(self, url: str):
        import boto3
        from botocore.config import Config

        parsed = urllib.parse.urlparse(url)
        q = dict(urllib.parse.parse_qsl(parsed.query))
        self.bucket = parsed.netloc
        self.prefix = "/".join(p for p in (parsed.path.strip("/"), PREFIX) if p)
        endpoint = q.get("endpoint")
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if q.get("disableSSL") == "true" else "https://") + endpoint
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=q.get("region") or os.environ.get("AWS_REGION"),
            config=Config(s3={"addressing_style": "path" if q.get("s3ForcePathStyle") == "true" else "auto"}),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}.json"

    def create(self, key: str, record: dict) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=json.dumps(record).encode(), IfNoneMatch="*"
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise

    def read(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return json.loads(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except ClientError:
            return None

    def write(self, key: str, record: dict) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=json.dumps(record).encode())

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def store_for(backend_url: str) -> Store:
    if backend_url.startswith("file://"):
        return FileStore(Path(backend_url.removeprefix("file://")))
    if backend_url.startswith("s3://"):
        return S3Store(backend_url)
    raise FleetError(
        f"PULUMI_BACKEND_URL: {backend_url.split('?')[0]!r}: fleet locks support file:// and s3:// "
        "backends (fix: use one of them, or run one fleet command at a time by other means)"
    )


@dataclass
class Held:
    key: str
    took_over: bool  # the previous owner died: its stack may need recovering


class FleetLock:
    """Locks on a set of stacks, all or none, renewed until released."""

    def __init__(self, store: Store, project: str, stacks: list[str], command: str):
        self.store, self.project, self.command = store, project, command
        self.stacks = sorted(stacks)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.held: dict[str, Held] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "command": self.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "expires": time.time() + LEASE_S,
        }

    def _key(self, stack: str) -> str:
        return f"{self.project}/{stack}"

    def acquire(self) -> FleetLock:
        busy: list[str] = []
        for stack in self.stacks:
            key = self._key(stack)
            record = self._record()
            if self.store.create(key, record):
                self.held[stack] = Held(key, False)
                continue
            current = self.store.read(key)
            if current is not None and not stale(current, time.time(), self.host):
                busy.append(
                    f"{stack} (held by {current.get('command')!r}, pid {current.get('pid')} on "
                    f"{current.get('host')}, since {current.get('started')})"
                )
                continue
            # A dead run's lock: take it over, then make sure no concurrent taker won.
            self.store.write(key, record)
            time.sleep(0.2)
            mine = self.store.read(key) or {}
            if mine.get("pid") == self.pid and mine.get("host") == self.host:
                self.held[stack] = Held(key, True)
            else:
                busy.append(f"{stack} (taken over by pid {mine.get('pid')} on {mine.get('host')})")
        if busy:
            self.release()
            raise FleetError(
                "another fleet command is changing these site stacks: "
                + "; ".join(busy)
                + " (fix: wait for it to finish; a lock whose owner died is taken over automatically "
                f"once its lease of {LEASE_S}s runs out)"
            )
        self._thread = threading.Thread(target=self._renew, name="fleet-lock", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            for held in list(self.held.values()):
                try:
                    self.store.write(held.key, self._record())
                except Exception:  # a missed renewal is retried; the lease covers several
                    pass

    def took_over(self, stack: str) -> bool:
        held = self.held.get(stack)
        return bool(held and held.took_over)

    def release_one(self, stack: str) -> None:
        """A site that finished no longer needs its lock (nor its renewals)."""
        held = self.held.pop(stack, None)
        if held is not None:
            self._drop(held)

    def _drop(self, held: Held) -> None:
        current = self.store.read(held.key) or {}
        if current.get("pid") == self.pid and current.get("host") == self.host:
            self.store.delete(held.key)

    def release(self) -> None:
        self._stop.set()
        for held in list(self.held.values()):
            self._drop(held)
        self.held.clear()

    def __enter__(self) -> FleetLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
