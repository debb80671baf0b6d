"""``haku restore`` refuses a bad file before it talks to the cluster, naming the file once."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import httpx2
import pytest
from lightkube import ApiError

from haku.backup import format as fmt
from haku.backup import run
from haku.datastore.base import Entry

HEADER = fmt.Header(source={"namespace": "a", "name": "t", "uid": "u", "dataStore": "dev-etcd",
                            "driver": "etcd"},
                    spec={"kubernetes": {"version": "v1.37.2"}}, kubernetes_version="v1.37.2",
                    created_at="2026-11-30T20:00:00Z")


class NoCluster:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the cluster was asked ({name}) about a bad file")


def backup(path: Path) -> bytes:
    w = fmt.Writer(path, HEADER)
    for i in range(2000):
        w.add(Entry(f"/configmaps/a/{i}".encode(), bytes(range(256)) * 2 + str(i).encode(), i))
    w.close()
    return path.read_bytes()


def cut(path: Path, data: bytes) -> None:
    path.write_bytes(data[: len(data) // 2])


def no_trailer(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(b"\n".join(gzip.decompress(data).split(b"\n")[:-2])))


def one_byte(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(data).replace(b"/a/7\"", b"/a/8\"", 1)))


def empty(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(b""))


@pytest.mark.parametrize(("damage", "why"), [(cut, "cut short"), (no_trailer, "cut short"),
                                             (one_byte, "checksum mismatch"),
                                             (empty, "is empty")])
async def test_a_bad_file_is_refused_naming_it_once(tmp_path: Path, damage: Any,
                                                    why: str) -> None:
    data = backup(tmp_path / "good.haku")
    bad = tmp_path / "bad.haku"
    damage(bad, data)
    with pytest.raises(run.BackupError) as e:
        await run.restore(NoCluster(), bad, "ns", "t", say=lambda _: None)  # type: ignore[arg-type]
    message = str(e.value)
    assert message.startswith(str(bad)) and message.count(str(bad)) == 1, message
    assert why in message, message


class EmptyCluster:
    """An admin cluster holding nothing: every get is a 404; nothing may be created."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def get(self, kind: Any, name: str, **_: Any) -> Any:
        self.asked.append((kind.__name__, name))
        raise ApiError(response=httpx2.Response(
            404, json={"code": 404, "message": "not found"},
            request=httpx2.Request("GET", "https://x")))

    async def create(self, obj: Any) -> Any:
        raise AssertionError(f"created {obj.kind} {obj.metadata.name}")


@pytest.mark.parametrize(("given", "named"), [("no-such", "no-such"), (None, "dev-etcd")])
async def test_a_restore_onto_a_missing_datastore_creates_nothing(
        tmp_path: Path, given: str | None, named: str) -> None:
    path = tmp_path / "good.haku"
    backup(path)
    cluster = EmptyCluster()
    with pytest.raises(run.BackupError, match=f"^DataStore {named} does not exist$"):
        await run.restore(cluster, path, "ns", "t", given,  # type: ignore[arg-type]
                          say=lambda _: None)
    assert cluster.asked == [("TenantControlPlane", "t"), ("DataStore", named)]
