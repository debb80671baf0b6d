"""Image layers from a root filesystem tarball or a directory tree, for :mod:`haku.dev.oci`.

Layers are uncompressed tars, reproducible and safe to run: entries sorted by name and dated at
the epoch, no setuid or setgid bits on files, no device nodes or FIFOs (the runtime mounts its
own ``/dev``), no extended attributes (so no file capabilities). A tarball's owners are kept; a
tree's entries are owned by root.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Bits a layer never carries on anything but a directory.
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
SKIPPED_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)

Rewrite = Callable[[bytes], bytes]


@dataclass(frozen=True)
class LayerStats:
    entries: int
    file_bytes: int  # regular file content, each hard-linked file once


def _normalize(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _clean(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    out = tarfile.TarInfo(name)
    out.type = info.type
    out.mode = stat.S_IMODE(info.mode) & (~0 if info.isdir() else ~SPECIAL_BITS)
    out.uid, out.gid = info.uid, info.gid
    out.uname, out.gname = info.uname, info.gname
    out.mtime = 0
    out.linkname = info.linkname
    return out


def layer_from_tarball(
    source: Path, out: IO[bytes], rewrite: Mapping[str, Rewrite] | None = None
) -> LayerStats:
    """Copy the root filesystem tarball ``source`` (mmdebstrap's ``--format=tar``) into a
    layer, passing the files named in ``rewrite`` (``etc/passwd``) through its functions.

    Hard links are kept, pointing at whichever of the linked names sorts first.
    """
    rewrite = dict(rewrite or {})
    with tarfile.open(source) as src:
        members: dict[str, tarfile.TarInfo] = {}
        for m in src.getmembers():
            name = _normalize(m.name)
            if name in ("", ".") or m.type in SKIPPED_TYPES or name.startswith("dev/"):
                continue
            members[name] = m
        groups: dict[str, list[str]] = {}  # the regular file -> every name linked to it
        for name, m in members.items():
            if m.islnk():
                target = _normalize(m.linkname)
                groups.setdefault(target, [target]).append(name)
        leader: dict[str, str] = {}
        content: dict[str, tarfile.TarInfo] = {}
        for target, names in groups.items():
            if target not in members or not members[target].isfile():
                raise ValueError(f"{source}: hard links to {target}, which is not a file in it")
            first = min(names)
            for name in names:
                leader[name] = first
            content[first] = members[target]
        clash = sorted(set(rewrite) & set(leader))
        if clash:
            raise ValueError(f"cannot rewrite hard-linked files: {clash}")
        entries = file_bytes = 0
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members):
                m = members[name]
                if name in leader and leader[name] != name:
                    info = _clean(content[leader[name]], name)
                    info.type, info.linkname = tarfile.LNKTYPE, leader[name]
                    tar.addfile(info)
                elif name in leader:
                    info = _clean(content[name], name)
                    info.size = content[name].size
                    tar.addfile(info, src.extractfile(content[name]))
                    file_bytes += info.size
                elif m.isfile():
                    info = _clean(m, name)
                    data = src.extractfile(m)
                    assert data is not None
                    if name in rewrite:
                        body = rewrite.pop(name)(data.read())
                        info.size = len(body)
                        tar.addfile(info, io.BytesIO(body))
                    else:
                        info.size = m.size
                        tar.addfile(info, data)
                    file_bytes += info.size
                else:
                    tar.addfile(_clean(m, name))
                entries += 1
        if rewrite:
            raise ValueError(f"files to rewrite are not in {source}: {sorted(rewrite)}")
    return LayerStats(entries, file_bytes)


def layer_from_tree(root: Path, out: IO[bytes]) -> LayerStats:
    """Every file, directory and symlink under ``root`` as a layer whose ``/`` is ``root``."""
    paths: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(directory, root)
        for entry in (*dirnames, *filenames):
            paths.append(entry if rel == "." else f"{rel}/{entry}")
    entries = file_bytes = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(paths):
            path = root / name
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if stat.S_ISLNK(st.st_mode):
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.mode = stat.S_IMODE(st.st_mode) & ~SPECIAL_BITS
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
                file_bytes += st.st_size
            else:
                continue  # sockets, FIFOs, devices: nothing an image should carry
            entries += 1
    return LayerStats(entries, file_bytes)
