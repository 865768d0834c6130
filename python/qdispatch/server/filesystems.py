"""Which filesystem the store is on, and whether SQLite's WAL mode is safe there.

WAL needs shared memory (the ``-shm`` file, mapped by every connection) and working byte
range locks, on one host: on a network or cluster filesystem (NFS, Lustre, GPFS, BeeGFS,
CIFS, CephFS…) a store used from two nodes, or through a client cache that does not
honour the locks, is corrupted without an error. The service refuses such a store unless
the operator opts in (``--allow-network-fs`` or ``QDISPATCH_ALLOW_NETWORK_FS=1``).

The type is read from ``/proc/self/mountinfo`` (the mount that contains the path; it
names FUSE filesystems by their subtype, ``fuse.sshfs``), else from ``statfs``'s
``f_type`` magic number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

#: Environment variable: a truthy value lets the service use a store on a network
#: filesystem (as ``--allow-network-fs`` does).
ALLOW_ENV = "QDISPATCH_ALLOW_NETWORK_FS"
#: Environment variable for tests: the filesystem type the check sees, whatever the path.
TEST_FSTYPE_ENV = "QDISPATCH_TEST_FSTYPE"

#: Filesystem types (as ``mountinfo`` names them) shared between hosts, where WAL is unsafe.
NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "9p",
        "afs",
        "coda",
        "ncpfs",
        "panfs",
        "pvfs2",
        "orangefs",
        "wekafs",
        "gfs2",
        "ocfs2",
        "glusterfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.ceph-fuse",
        "fuse.beegfs",
        "fuse.quobyte",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.juicefs",
        "fuse.gcsfuse",
        "fuse.cvmfs",
    }
)

#: ``statfs`` ``f_type`` magic numbers (linux/magic.h and the vendors') of those types.
NETWORK_MAGIC = {
    0x6969: "nfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb3",
    0x517B: "smbfs",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x73757245: "coda",
    0x564C: "ncpfs",
    0xAAD7AAEA: "panfs",
    0x20030528: "pvfs2",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
}


def is_network_fstype(fstype: str) -> bool:
    """Whether ``fstype`` (a ``mountinfo`` type such as ``nfs4`` or ``fuse.sshfs``) is a
    network or cluster filesystem."""
    name = fstype.strip().lower()
    return name in NETWORK_FSTYPES or name.split(".", 1)[0] in NETWORK_FSTYPES


def fstype_of_magic(magic: int) -> str | None:
    """The network filesystem with ``statfs`` magic number ``magic``; ``None`` for any
    other (a local one, or plain FUSE, whose subtype ``statfs`` does not tell)."""
    return NETWORK_MAGIC.get(magic & 0xFFFFFFFF)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_fstype(path: Path, mountinfo: str) -> str | None:
    """The type of the mount, in ``mountinfo`` (``/proc/self/mountinfo``'s text), that
    contains ``path`` (absolute, symbolic links resolved): the longest mount point that is
    ``path`` or one of its parents, the last one mounted if several."""
    best: tuple[int, str] | None = None
    target = str(path)
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), tail[0])
    return best[1] if best else None


class _StatFs(ctypes.Structure):
    # Linux's struct statfs: f_type comes first, a long wide, on every architecture.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


def statfs_magic(path: Path) -> int | None:
    """``statfs(path).f_type`` on Linux; ``None`` where it cannot be had (other systems lay
    out ``struct statfs`` differently)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    buf = _StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def _existing(path: Path) -> Path:
    """``path`` resolved, or its nearest ancestor that exists (a store not made yet)."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.resolve()
    return Path("/")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``nfs4``, ``fuse.sshfs``…);
    ``None`` if it cannot be told. ``QDISPATCH_TEST_FSTYPE`` overrides it (tests)."""
    forced = os.environ.get(TEST_FSTYPE_ENV)
    if forced:
        return forced
    where = _existing(path)
    try:
        found = mount_fstype(where, Path("/proc/self/mountinfo").read_text(errors="replace"))
    except OSError:
        found = None
    if found is not None:
        return found
    magic = statfs_magic(where)
    return None if magic is None else fstype_of_magic(magic)


def allowed_by_env() -> bool:
    """Whether ``QDISPATCH_ALLOW_NETWORK_FS`` opts in to a store on a network filesystem."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def network_fs_refusal(db: Path, allow: bool = False) -> str | None:
    """Why the store ``db`` must not be used: the directory it is in is on a network
    filesystem and the operator did not opt in (``allow``, or ``QDISPATCH_ALLOW_NETWORK_FS``);
    ``None`` when it may be used."""
    if allow or allowed_by_env():
        return None
    fstype = filesystem_type(db.parent)
    if fstype is None or not is_network_fstype(fstype):
        return None
    return (
        f"the store {db} is on a network filesystem ({fstype}), where SQLite's WAL mode "
        "is unsafe (it needs shared memory and locks on one host) and the store can be "
        "corrupted silently. Put the store on a node-local disk (--db /local/path/jobs.db, "
        "or QDISPATCH_DATA_DIR=/local/scratch/qdispatch for the local service), or run one "
        "shared 'qdispatch serve' that every node connects to; to use this filesystem "
        f"anyway, when only one host ever opens the store, give --allow-network-fs or set "
        f"{ALLOW_ENV}=1"
    )
