"""The dev cluster's local OCI registry, and how containerd pulls through it.

``haku dev up`` runs CNCF Distribution's ``registry serve`` (the cached ``registry`` component,
``haku dev build registry``) as a supervised host process: its configuration and storage under
``<state>/registry``, its log (access log included) in ``<state>/logs/registry.log``, listening
on the node IP only (``Layout.registry_endpoint``, ``10.245.0.1:5000``), which the admin
containerd, every dev worker (it is their gateway) and host-side clients reach, and nothing off
the machine does.

**Plain HTTP, no TLS.** The address exists only on this machine (a bridge of Haku's, not eth0);
every blob and manifest is addressed by its sha256 and containerd checks each digest, so TLS
would add no integrity, only a CA to hand every containerd and every client. No authentication
either: anything on this machine may push.

**Repositories carry the upstream registry's host** as their first path element:
``registry.k8s.io/e2e-test-images/agnhost:2.66.1`` is the local repository
``registry.k8s.io/e2e-test-images/agnhost``, tag ``2.66.1``. So two upstream registries never
clash, and an image keeps one name everywhere.

**containerd** (the admin node's and each dev worker's) gets ``config_path`` (the containerd
configuration in :mod:`haku.dev.config`) and, for each of :data:`MIRRORED`, a ``hosts.toml``
(:func:`hosts_toml`) that sends every pull and resolve of that registry to the local one at
``/v2/<host>`` (``override_path``), both as its mirror and as its server: a pull never falls
back to the internet, which is unreachable here (an image the local registry lacks fails at
once with "not found"). Images imported into containerd are untouched by this: the kubelet
only pulls what is not there (``IfNotPresent``) or when told to (``Always``).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from haku.dev.layout import Layout

NAME = "registry"
# The upstream registries whose pulls go to the local registry. registry.k8s.io: the
# conformance images and Kubernetes' own; docker.io: kine and the test busybox.
MIRRORED = ("registry.k8s.io", "docker.io")
READY_TIMEOUT = 30.0
# OpenTelemetry (Distribution v3 traces with it): there is no collector here.
ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
       "OTEL_LOGS_EXPORTER": "none"}


def config_path(layout: Layout) -> Path:
    return layout.registry_dir / "config.yml"


def storage_dir(layout: Layout) -> Path:
    return layout.registry_dir / "storage"


def config_yaml(layout: Layout) -> str:
    """Distribution's configuration: filesystem storage, deletes allowed (tests clean up),
    the node IP only, the access log on (one line a request: which manifest was pulled)."""
    doc = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_dir(layout))},
            "delete": {"enabled": True},
        },
        "http": {"addr": layout.registry_endpoint},
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


def argv(binary: Path, layout: Layout) -> list[str]:
    return [str(binary), "serve", str(config_path(layout))]


def write_config(layout: Layout) -> None:
    storage_dir(layout).mkdir(parents=True, exist_ok=True)
    path = config_path(layout)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_yaml(layout))
    tmp.rename(path)


def ready(endpoint: str, timeout: float = 2.0) -> bool:
    """``GET /v2/`` answers 200 (the API version check every client starts with)."""
    conn = http.client.HTTPConnection(endpoint, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# containerd


def mirror_url(endpoint: str, upstream: str) -> str:
    """The API root of ``upstream``'s repositories in the local registry."""
    return f"http://{endpoint}/v2/{upstream}"


def hosts_toml(upstream: str, endpoint: str) -> str:
    """containerd's ``hosts.toml`` for ``upstream``: the local registry as its one mirror and
    as its server too (the server is where containerd goes when the mirrors fail: with
    upstream's own there, a missing image would be asked of the internet). The host table is
    kept besides the server: containerd 1.6 reads a file without one as broken."""
    url = mirror_url(endpoint, upstream)
    return (f"# Written by haku dev: {upstream} is served by the dev cluster's registry.\n"
            f'server = "{url}"\n'
            "override_path = true\n"
            'capabilities = ["pull", "resolve"]\n'
            "\n"
            f'[host."{url}"]\n'
            "  override_path = true\n"
            '  capabilities = ["pull", "resolve"]\n')


def write_hosts(hosts_dir: Path, endpoint: str,
                upstreams: tuple[str, ...] = MIRRORED) -> list[Path]:
    """``<hosts_dir>/<upstream>/hosts.toml`` for each upstream (containerd reads them at each
    pull: no restart needed)."""
    written = []
    for upstream in upstreams:
        path = hosts_dir / upstream / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("hosts.toml.tmp")
        tmp.write_text(hosts_toml(upstream, endpoint))
        tmp.rename(path)
        written.append(path)
    return written

