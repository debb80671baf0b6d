"""The local registry's configuration and containerd's hosts.toml (pure), and the push client
against a real ``registry serve`` (the cached CNCF Distribution binary, on loopback)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from haku.dev import config, distribution, oci, registry, toolchain
from haku.dev.layout import Layout, Ports
from haku.dev.processes import ProcessSpec, Supervisor
from haku.dev.versions import Versions
from haku.dev.worker_config import WorkerPaths, containerd_toml
from haku.dev.worker_net import WorkerNet

# ------------------------------------------------------------------ configuration (pure)


def test_registry_listens_on_the_node_ip_with_storage_in_the_state_dir() -> None:
    layout = Layout(state_dir=Path("/var/lib/haku/x"))
    doc = yaml.safe_load(registry.config_yaml(layout))
    assert doc["http"]["addr"] == "10.245.0.1:5000" == layout.registry_endpoint
    assert doc["storage"]["filesystem"]["rootdirectory"] == "/var/lib/haku/x/registry/storage"
    assert doc["log"]["accesslog"]["disabled"] is False
    assert "tls" not in doc["http"]
    assert layout.listen_ports()[5000] == "registry"
    assert registry.argv(Path("/c/registry"), layout) == [
        "/c/registry", "serve", "/var/lib/haku/x/registry/config.yml"]
    # the API-only and datastores-only layouts run no registry and bind no port for it
    assert 5000 not in Layout.api_only(Path("/a")).listen_ports()


def test_hosts_toml_sends_pulls_to_the_local_registry_and_never_upstream(
        tmp_path: Path) -> None:
    written = registry.write_hosts(tmp_path / "certs.d", "10.245.0.1:5000")
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "certs.d/registry.k8s.io/hosts.toml", "certs.d/docker.io/hosts.toml"]
    doc = tomllib.loads(written[0].read_text())
    local = "http://10.245.0.1:5000/v2/registry.k8s.io"
    # the server (containerd's last resort) is the local registry too, with its path kept
    assert doc["server"] == local and doc["override_path"] is True
    assert doc["capabilities"] == ["pull", "resolve"]
    assert doc["host"] == {local: {"override_path": True, "capabilities": ["pull", "resolve"]}}
    assert "push" not in written[1].read_text()
    assert tomllib.loads(written[1].read_text())["server"] == \
        "http://10.245.0.1:5000/v2/docker.io"


def test_admin_and_worker_containerd_read_their_hosts_directories() -> None:
    layout = Layout(state_dir=Path("/var/lib/haku/x"))
    doc = tomllib.loads(config.containerd_toml(layout, "registry.k8s.io/pause:3.10.2"))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"]["config_path"] == "/var/lib/haku/x/containerd/certs.d"
    assert layout.containerd_hosts_dir == Path("/var/lib/haku/x/containerd/certs.d")
    paths = WorkerPaths(Path("/var/lib/haku/x/workers/w2"))
    doc = tomllib.loads(containerd_toml(paths, WorkerNet(2, layout.node_ip), "p:1"))
    assert doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"] == \
        str(paths.containerd_hosts_dir) == "/var/lib/haku/x/workers/w2/containerd/certs.d"


def test_split_name() -> None:
    assert distribution.split_name("registry.k8s.io/e2e-test-images/agnhost:2.66.1") == (
        "registry.k8s.io/e2e-test-images/agnhost", "2.66.1")
    for bad in ("registry.k8s.io/pause", "host:5000/pause"):
        with pytest.raises(ValueError):
            distribution.split_name(bad)


# ------------------------------------------------------------------ a real registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Layout, Supervisor]]:
    """``registry serve`` with Haku's configuration, on loopback and a free port."""
    component = toolchain.components(Versions())["registry"]
    root = toolchain.cache_root()
    if not component.is_built(root):
        pytest.skip("the registry binary is not cached: run `haku dev build registry`")
    state = tmp_path_factory.mktemp("registry")
    layout = Layout(state_dir=state, node_ip="127.0.0.1", ports=Ports(registry=_free_port()))
    registry.write_config(layout)
    supervisor = Supervisor(layout.pids, layout.logs)
    binary = component.directory(root) / "registry"
    supervisor.start(ProcessSpec(registry.NAME, registry.argv(binary, layout),
                                 env=registry.ENV))
    try:
        supervisor.wait_ready(registry.NAME, lambda: registry.ready(layout.registry_endpoint),
                              registry.READY_TIMEOUT)
        yield layout, supervisor
    finally:
        supervisor.stop(registry.NAME)


def _image(tmp_path: Path, name: str, payload: bytes) -> tuple[Path, str]:
    spec = oci.ImageSpec(name=name, entrypoint=("/bin/tool",),
                         files=(oci.LayerFile("/bin/tool", data=payload),))
    archive = tmp_path / "img.tar"
    return archive, oci.write_image(spec, archive)


def test_push_gives_the_registry_the_archives_digest_and_pushes_once(
        served: tuple[Layout, Supervisor], tmp_path: Path) -> None:
    layout, _ = served
    client = distribution.Client(layout.registry_endpoint)
    assert client.ping()
    archive, digest = _image(tmp_path, "registry.k8s.io/e2e-test-images/tool:1.0",
                             b"x" * 300_000)
    first = distribution.push_archive(client, archive)
    assert (first.repository, first.tags, first.digest) == (
        "registry.k8s.io/e2e-test-images/tool", ["1.0"], digest)
    assert first.uploaded > 300_000 and first.existing == 0 and len(first.blobs) == 2
    assert client.manifest_digest("registry.k8s.io/e2e-test-images/tool", "1.0") == digest
    media_type, body = client.manifest("registry.k8s.io/e2e-test-images/tool", "1.0")
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    layer = json.loads(body)["layers"][0]
    blob = client.request("GET", f"/v2/registry.k8s.io/e2e-test-images/tool/blobs/"
                                 f"{layer['digest']}").body
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    # again: nothing is uploaded, the tag still names the same manifest
    again = distribution.push_archive(client, archive)
    assert again.uploaded == 0 and again.existing == 2 and again.digest == digest
    assert "registry.k8s.io/e2e-test-images/tool" in client.catalog()
    assert client.manifest_digest("registry.k8s.io/e2e-test-images/tool", "2.0") is None


def test_push_under_another_name_and_tags_mounting_the_blobs(
        served: tuple[Layout, Supervisor], tmp_path: Path) -> None:
    layout, supervisor = served
    client = distribution.Client(layout.registry_endpoint)
    archive, digest = _image(tmp_path, "registry.k8s.io/etcd:3.7.3-0", b"etcd" * 1000)
    distribution.push_archive(client, archive)
    # the same image as e2e.test names it, in another repository: mounted, not uploaded
    other = distribution.push_archive(client, archive, name="registry.k8s.io/other/etcd:3.7.0-0",
                                      extra_tags=["latest"], mount_from=["registry.k8s.io/etcd"])
    assert other.mounted == 2 and other.uploaded == 0 and other.digest == digest
    assert client.tags("registry.k8s.io/other/etcd") == ["3.7.0-0", "latest"]
    assert client.tags("registry.k8s.io/nothing") == []
    log = supervisor.log_path(registry.NAME).read_text()
    assert "PUT /v2/registry.k8s.io/other/etcd/manifests/3.7.0-0" in log  # the access log


def test_push_refuses_what_is_not_an_image_archive(
        served: tuple[Layout, Supervisor], tmp_path: Path) -> None:
    layout, _ = served
    client = distribution.Client(layout.registry_endpoint)
    bogus = tmp_path / "bogus.tar"
    subprocess.run(["tar", "-cf", str(bogus), "-T", "/dev/null"], check=True)
    with pytest.raises(distribution.RegistryError, match="not an OCI image archive"):
        distribution.push_archive(client, bogus)
    with pytest.raises(distribution.RegistryError, match="answered 404"):
        client.manifest("registry.k8s.io/missing", "1")
    dead = distribution.Client(f"127.0.0.1:{_free_port()}", timeout=2)
    assert not dead.ping()
