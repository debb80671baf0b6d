"""The operator image's pure parts: configuration, layers from a tiny fake rootfs, cache keys,
and the build's assembly from cached layers (the real build:
tests/node/test_operator_image_build.py)."""

import io
import json
import os
import stat
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

import haku
from haku.dev import layers, oci
from haku.dev import operator_image as op
from haku.dev.versions import VersionError, operator_image_name


def test_image_name_is_tagged_with_hakus_version() -> None:
    assert operator_image_name() == f"ghcr.io/haku-dev/haku:{haku.__version__}"
    assert operator_image_name("1.2.3") == "ghcr.io/haku-dev/haku:1.2.3"
    with pytest.raises(VersionError):
        operator_image_name("1.0+local")


def test_runtime_config_runs_the_operator_as_nonroot() -> None:
    config = op.runtime_config()
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python3", "-m", "haku"]
    assert config["Cmd"] == ["operator", "run"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert any(e.startswith("PATH=") for e in config["Env"])
    assert config["Labels"]["org.opencontainers.image.version"] == haku.__version__


def test_mmdebstrap_command_is_apt_less_and_small() -> None:
    command = op.mmdebstrap_command(Path("/x/rootfs.tar"))
    assert command[0] == "mmdebstrap"
    assert "--variant=essential" in command
    assert "--include=ca-certificates,libstdc++6,python3" in command
    assert "--format=tar" in command
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in command
    assert "--dpkgopt=path-exclude=/usr/share/locale/*" in command
    assert command.index("bookworm") + 1 == command.index("/x/rootfs.tar")


def test_user_lines_are_added_once() -> None:
    passwd = b"root:x:0:0:root:/root:/bin/bash\n"
    once = op.add_line(passwd, op.PASSWD_LINE)
    last = once.decode().splitlines()[-1]
    assert last == "haku:x:65532:65532:haku:/nonexistent:/usr/sbin/nologin"
    assert op.add_line(once, op.PASSWD_LINE) == once
    assert op.add_line(b"root:x:0:\n", op.GROUP_LINE) == b"root:x:0:\nhaku:x:65532:\n"


def _fake_rootfs(path: Path) -> None:
    """A tarball like mmdebstrap's: ./-prefixed names, devices, setuid, a hard link."""
    with tarfile.open(path, "w") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes = b"",
                gid: int = 0, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.gid, info.mtime = kind, mode, gid, 1_700_000_000
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.pax_headers = {"SCHILY.xattr.security.capability": "x"}
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("./", tarfile.DIRTYPE, 0o755)
        add("./usr/", tarfile.DIRTYPE, 0o755)
        add("./usr/bin/", tarfile.DIRTYPE, 0o755)
        add("./usr/bin/su", mode=0o4755, data=b"su")
        add("./usr/bin/zperl", mode=0o755, data=b"perl")
        add("./usr/bin/aperl", tarfile.LNKTYPE, 0o755, link="./usr/bin/zperl")
        add("./usr/sbin/", tarfile.DIRTYPE, 0o755)
        add("./usr/sbin/unix_chkpwd", mode=0o2755, data=b"chk", gid=42)
        add("./bin", tarfile.SYMTYPE, 0o777, link="usr/bin")
        add("./dev/", tarfile.DIRTYPE, 0o755)
        add("./dev/null", tarfile.CHRTYPE, 0o666)
        add("./tmp/", tarfile.DIRTYPE, 0o1777)
        add("./etc/", tarfile.DIRTYPE, 0o755)
        add("./etc/passwd", data=b"root:x:0:0:root:/root:/bin/bash\n")
        add("./etc/group", data=b"root:x:0:\n")


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_layer_from_a_rootfs_tarball(tmp_path: Path) -> None:
    _fake_rootfs(tmp_path / "rootfs.tar")
    out = io.BytesIO()
    rewrite = {"etc/passwd": lambda b: op.add_line(b, op.PASSWD_LINE),
               "etc/group": lambda b: op.add_line(b, op.GROUP_LINE)}
    stats = layers.layer_from_tarball(tmp_path / "rootfs.tar", out, rewrite)
    members = _members(out.getvalue())
    names = [m.name for m in members]
    assert names == sorted(names)
    by = {m.name: m for m in members}
    assert "dev" in by and "dev/null" not in by  # the runtime makes /dev
    assert by["tmp"].mode == 0o1777
    assert by["usr/bin/su"].mode == 0o755  # setuid dropped
    assert by["usr/sbin/unix_chkpwd"].mode == 0o755 and by["usr/sbin/unix_chkpwd"].gid == 42
    # the hard link sorts before its target: the first name holds the data, the other links
    assert by["usr/bin/aperl"].isfile() and by["usr/bin/aperl"].size == 4
    assert by["usr/bin/zperl"].islnk() and by["usr/bin/zperl"].linkname == "usr/bin/aperl"
    assert by["bin"].issym() and by["bin"].linkname == "usr/bin"
    assert all(m.mtime == 0 and not m.pax_headers.get("SCHILY.xattr.security.capability")
               for m in members)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None
        assert passwd.read().decode().endswith(op.PASSWD_LINE + "\n")
    assert stats.entries == len(members)
    # su, aperl (once), chkpwd, passwd and group
    assert stats.file_bytes == 2 + 4 + 3 + len(op.add_line(
        b"root:x:0:0:root:/root:/bin/bash\n", op.PASSWD_LINE)) + len(b"root:x:0:\nhaku:x:65532:\n")


def test_rootfs_layers_are_reproducible(tmp_path: Path) -> None:
    _fake_rootfs(tmp_path / "rootfs.tar")
    first, second = io.BytesIO(), io.BytesIO()
    layers.layer_from_tarball(tmp_path / "rootfs.tar", first)
    layers.layer_from_tarball(tmp_path / "rootfs.tar", second)
    assert first.getvalue() == second.getvalue()


def test_rewriting_a_missing_file_fails(tmp_path: Path) -> None:
    _fake_rootfs(tmp_path / "rootfs.tar")
    with pytest.raises(ValueError, match="etc/shadow"):
        layers.layer_from_tarball(tmp_path / "rootfs.tar", io.BytesIO(),
                                  {"etc/shadow": lambda b: b})


def test_layer_from_a_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    site = root / "usr/local/lib/python3.11/dist-packages/pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("x = 1\n")
    (site / "tool").write_bytes(b"#!")
    (site / "tool").chmod(0o4755)
    (site / "alias.py").symlink_to("__init__.py")
    out = io.BytesIO()
    stats = layers.layer_from_tree(root, out)
    by = {m.name: m for m in _members(out.getvalue())}
    assert list(by) == sorted(by)
    assert by["usr"].isdir() and by["usr/local/lib/python3.11/dist-packages"].isdir()
    prefix = "usr/local/lib/python3.11/dist-packages/pkg/"
    assert by[prefix + "tool"].mode == 0o755
    assert by[prefix + "alias.py"].issym() and by[prefix + "alias.py"].linkname == "__init__.py"
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in by.values())
    assert stats.file_bytes == len("x = 1\n") + 2


def test_cache_keys() -> None:
    assert op.base_key() == op.base_key()
    assert op.deps_key(["a==1", "b==2"]) == op.deps_key(["b==2", "a==1"])
    assert op.deps_key(["a==1"]) != op.deps_key(["a==2"])
    assert op.deps_key(["a==1"]) != op.deps_key(["a==1"], python=(3, 12))


def test_base_key_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    before = op.base_key()
    monkeypatch.setattr(op, "BASE_PACKAGES", (*op.BASE_PACKAGES, "tzdata"))
    assert op.base_key() != before


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "src/haku").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "haku"\nversion = "0.1.0"\ndependencies = ["PyYAML>=6"]\n')
    (project / "README.md").write_text("# Haku\n")
    (project / "src/haku/__init__.py").write_text("")
    return project


def test_source_key_follows_the_sources_only(tmp_path: Path) -> None:
    project = _project(tmp_path)
    key = op.source_key(project)
    (project / "src/haku/__pycache__").mkdir()
    (project / "src/haku/__pycache__/x.pyc").write_bytes(b"junk")
    assert op.source_key(project) == key
    (project / "src/haku/__init__.py").write_text("x = 1\n")
    assert op.source_key(project) != key


def test_dependencies_are_pinned_to_what_is_installed() -> None:
    pins = op.pinned_closure(["PyYAML>=6", "psycopg[binary]>=3.2,<4"])
    assert f"pyyaml=={metadata.version('PyYAML')}" in pins
    assert f"psycopg-binary=={metadata.version('psycopg-binary')}" in pins  # via the extra
    names = [p.split("==")[0] for p in pins]
    assert names == sorted(set(names))
    with pytest.raises(op.OperatorImageError, match="not installed"):
        op.pinned_closure(["haku-no-such-package>=1"])
    with pytest.raises(op.OperatorImageError, match="is needed"):
        op.pinned_closure(["PyYAML<1"])


def test_layered_archive_round_trips(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        root = tmp_path / f"tree{i}"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / f"f{i}").write_text(str(i))
        path = tmp_path / f"l{i}.tar"
        with path.open("wb") as f:
            layers.layer_from_tree(root, f)
        paths.append(oci.layer_of(path))
    digest = oci.write_layered_image("example.com/x:1", op.runtime_config(), paths,
                                     tmp_path / "a.tar")
    again = oci.write_layered_image("example.com/x:1", op.runtime_config(), paths,
                                    tmp_path / "b.tar")
    assert digest == again
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    summary = oci.read_layered_archive(tmp_path / "a.tar")
    assert summary.name == "example.com/x:1" and summary.manifest_digest == digest
    assert summary.layers == tuple(p.digest for p in paths)
    assert summary.config["config"]["User"] == "65532:65532"
    assert [m["mediaType"] for m in summary.manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar"] * 2
    with pytest.raises(ValueError, match="tag"):
        oci.write_layered_image("example.com/x", {}, paths, tmp_path / "c.tar")


def test_warm_build_assembles_cached_layers(tmp_path: Path) -> None:
    """With every layer in the cache, a build runs nothing (no mmdebstrap, no pip)."""
    project = _project(tmp_path)
    cache = tmp_path / "cache"
    directory = cache / "operator-image"
    pins = op.pinned_closure(op.project_dependencies(project / "pyproject.toml"))
    for kind, key in (("rootfs", op.base_key()), ("deps", op.deps_key(pins)),
                      ("haku", op.source_key(project))):
        tree = tmp_path / kind
        (tree / kind).mkdir(parents=True)
        (tree / kind / "file").write_text(kind)

        def write(out: Path, tree: Path = tree) -> layers.LayerStats:
            with out.open("wb") as f:
                return layers.layer_from_tree(tree, f)

        op._store(directory, kind, key, write)
    lines: list[str] = []
    archive, name = op.build_operator_image(cache, lines.append, project)
    assert name == operator_image_name()
    assert archive == cache / "images" / "ghcr.io_haku-dev_haku_0.1.0.tar".replace(
        "0.1.0", haku.__version__)
    assert sum("cached" in line for line in lines) == 3
    summary = oci.read_layered_archive(archive)
    assert len(summary.layers) == 3
    built = op.built_image(archive, name)
    assert built.name == name and built.digest == summary.manifest_digest
    assert op.rootfs_bytes(archive) == len("rootfs") + len("deps") + len("haku")
    dest = tmp_path / "unpacked"
    dest.mkdir()
    if os.geteuid() == 0:
        op.unpack(archive, dest)
        assert (dest / "deps" / "file").read_text() == "deps"
        assert stat.S_IMODE((dest / "haku").stat().st_mode) == 0o755
    meta = json.loads(archive.with_suffix(".json").read_text())
    assert meta["name"] == name
