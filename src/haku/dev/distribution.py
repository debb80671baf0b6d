"""A small OCI distribution client: push the image archives Haku writes to a registry.

Just what pushing needs (the OCI distribution spec's push and the few reads that check it):
``GET /v2/``; a blob's ``HEAD``; a monolithic upload (``POST /v2/<name>/blobs/uploads/``, then
one ``PUT <location>&digest=...`` with the whole blob, streamed from the archive); a cross-
repository mount (``POST ...?mount=<digest>&from=<repository>``) when the blob is known to be in
another repository of the same registry; the manifest's ``PUT`` under each tag; its ``HEAD``;
the tag list and the catalog. Plain HTTP, no authentication: the dev cluster's registry
(:mod:`haku.dev.registry`).

:func:`push_archive` pushes an archive of :mod:`haku.dev.oci` (an OCI image layout in a tar,
one image manifest) byte for byte: the manifest digest in the registry is the one
``ctr images import`` gives the same archive, so a pull of a tag finds whatever was imported
before and fetches nothing again.
"""

from __future__ import annotations

import http.client
import json
import tarfile
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from haku.errors import HakuError

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
TIMEOUT = 120.0  # one request; a blob of a few hundred MB on loopback takes seconds
BLOCK = 1 << 20


class RegistryError(HakuError):
    """The registry refused a request or could not be reached."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """Requests to one registry (``host:port``) over plain HTTP; a connection a request."""

    def __init__(self, endpoint: str, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | IO[bytes] | None = None,
                headers: dict[str, str] | None = None,
                expect: Iterable[int] = (200,)) -> Response:
        conn = http.client.HTTPConnection(self.endpoint, timeout=self.timeout, blocksize=BLOCK)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            data = reply.read()
        except OSError as e:
            raise RegistryError(f"{method} http://{self.endpoint}{path}: {e}") from e
        finally:
            conn.close()
        response = Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
        if response.status not in tuple(expect):
            raise RegistryError(f"{method} http://{self.endpoint}{path} answered "
                                f"{response.status}: {_errors(data)}")
        return response

    # ---- reads

    def ping(self) -> bool:
        try:
            return self.request("GET", "/v2/", expect=(200, 401)).status == 200
        except RegistryError:
            return False

    def blob_exists(self, repository: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, 404))
        return r.status == 200

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry serves for a tag (or digest); None if it has none."""
        r = self.request("HEAD", f"/v2/{repository}/manifests/{reference}",
                         headers={"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)},
                         expect=(200, 404))
        return r.headers.get("docker-content-digest") if r.status == 200 else None

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """(media type, bytes) of a manifest."""
        r = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                         headers={"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)})
        return r.headers.get("content-type", ""), r.body

    def tags(self, repository: str) -> list[str]:
        r = self.request("GET", f"/v2/{repository}/tags/list", expect=(200, 404))
        if r.status == 404:
            return []
        return sorted(json.loads(r.body).get("tags") or [])

    def catalog(self) -> list[str]:
        """The repositories (the first 1,000: the registry's page limit)."""
        r = self.request("GET", "/v2/_catalog?n=1000")
        return sorted(json.loads(r.body).get("repositories") or [])

    # ---- writes

    def _start_upload(self, repository: str, query: str = "") -> Response:
        return self.request("POST", f"/v2/{repository}/blobs/uploads/{query}",
                            headers={"Content-Length": "0"}, expect=(201, 202))

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Mount ``digest`` from repository ``source`` into ``repository``; False if the
        registry declined (it then opened an upload, which is cancelled)."""
        query = "?" + urllib.parse.urlencode({"mount": digest, "from": source})
        r = self._start_upload(repository, query)
        if r.status == 201:
            return True
        location = _location(r)
        self.request("DELETE", location, expect=(204, 404))
        return False

    def upload_blob(self, repository: str, digest: str, size: int,
                    data: bytes | IO[bytes]) -> None:
        """A monolithic upload: POST opens it, one PUT carries the whole blob and closes it."""
        location = _location(self._start_upload(repository))
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}{urllib.parse.urlencode({'digest': digest})}",
                     body=data,
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(size)},
                     expect=(201,))

    def put_manifest(self, repository: str, reference: str, media_type: str,
                     data: bytes) -> str:
        r = self.request("PUT", f"/v2/{repository}/manifests/{reference}", body=data,
                         headers={"Content-Type": media_type,
                                  "Content-Length": str(len(data))},
                         expect=(201,))
        return r.headers.get("docker-content-digest", "")

    def delete_manifest(self, repository: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{repository}/manifests/{digest}", expect=(202,))


def _location(r: Response) -> str:
    """The upload URL's path and query (the registry may answer an absolute URL)."""
    location = r.headers.get("location")
    if not location:
        raise RegistryError("the registry opened an upload without a Location")
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _errors(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace") or "no body"


# ---------------------------------------------------------------------------------------------
# Archives


@dataclass
class PushResult:
    name: str  # repository:tag as pushed first
    repository: str
    tags: list[str]
    digest: str  # the manifest's
    uploaded: int = 0  # blob bytes sent
    existing: int = 0  # blobs the registry had
    mounted: int = 0  # blobs mounted from another repository
    seconds: float = 0.0
    blobs: list[str] = field(default_factory=list)


def split_name(image: str) -> tuple[str, str]:
    """``registry.k8s.io/pause:3.10.2`` -> (``registry.k8s.io/pause``, ``3.10.2``)."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not repository:
        raise ValueError(f"{image!r} has no tag")
    return repository, tag


def archive_entry(archive: Path) -> dict[str, Any]:
    """The one manifest descriptor of an archive's ``index.json``."""
    with tarfile.open(archive) as tar:
        index = _member(tar, "index.json", archive)
    manifests = json.loads(index)["manifests"]
    if len(manifests) != 1:
        raise RegistryError(f"{archive}: {len(manifests)} manifests in index.json, not one")
    entry: dict[str, Any] = manifests[0]
    return entry


def _member(tar: tarfile.TarFile, name: str, archive: Path) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise RegistryError(f"{archive} has no {name}: not an OCI image archive")
    return f.read()


def push_archive(client: Client, archive: Path, name: str | None = None,
                 extra_tags: Iterable[str] = (),
                 mount_from: Iterable[str] = ()) -> PushResult:
    """Push the image in ``archive`` as ``name`` (default: the name it was written with,
    ``io.containerd.image.name``), under ``name``'s tag and each of ``extra_tags``.

    Blobs the repository has are skipped; a blob missing there is first mounted from the
    repositories ``mount_from`` (those pushed earlier from the same layers), else uploaded.
    The manifest goes last, once every blob it names is there.
    """
    started = time.monotonic()
    entry = archive_entry(archive)
    if entry.get("mediaType") not in MANIFEST_TYPES:
        raise RegistryError(f"{archive}: {entry.get('mediaType')} is not an image manifest "
                            "(indexes are not pushed)")
    image = name or entry.get("annotations", {}).get("io.containerd.image.name")
    if not image:
        raise RegistryError(f"{archive}: no image name in it; give one")
    repository, tag = split_name(image)
    tags = [tag, *[t for t in extra_tags if t != tag]]
    result = PushResult(image, repository, tags, entry["digest"])
    sources = [s for s in mount_from if s != repository]
    with tarfile.open(archive) as tar:
        manifest_bytes = _member(tar, _blob_path(entry["digest"]), archive)
        manifest = json.loads(manifest_bytes)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            digest, size = descriptor["digest"], descriptor["size"]
            result.blobs.append(digest)
            if client.blob_exists(repository, digest):
                result.existing += 1
                continue
            if any(client.blob_exists(s, digest) and client.mount_blob(repository, digest, s)
                   for s in sources):
                result.mounted += 1
                continue
            try:
                member = tar.getmember(_blob_path(digest))
            except KeyError:
                raise RegistryError(f"{archive} lacks blob {digest}") from None
            if member.size != size:
                raise RegistryError(f"{archive}: blob {digest} is {member.size} bytes, the "
                                    f"manifest says {size}")
            data = tar.extractfile(member)
            assert data is not None
            client.upload_blob(repository, digest, size, data)
            result.uploaded += size
    for t in tags:
        digest = client.put_manifest(repository, t, entry["mediaType"], manifest_bytes)
        if digest and digest != entry["digest"]:
            raise RegistryError(f"{repository}:{t}: the registry stored {digest}, the archive "
                                f"holds {entry['digest']}")
    result.seconds = time.monotonic() - started
    return result


def _blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"
