"""One lease and its file: the name, the JSON inside, and the one reader that trusts none of it.

A lease file is written once by its holder and never rewritten: what changes over
its life lives in the file system's own metadata, which only the file's owner (or
the kernel) can set:

* owner: the file's ``st_uid`` (the holder's ``$JUPYTERHUB_USER`` inside is a label only);
* heartbeat: ``st_ctime``, which the kernel sets to "now" whenever the owner touches
  the file (``os.utime``); nobody can set it to the future;
* last use (for "idle 2 h"): ``st_mtime``, set by the owner with each heartbeat (equal to
  the content's ``created_s`` while the model has not generated);
* granted: the owner-write bit (``0644``); a claim still being checked is ``0444``.

File name: ``<GPU uuid>.u<uid>.<lease id>.<generation>.lease`` (``/`` in old-style MIG
UUIDs written as ``_``). The uid in the name must be the file's owner; the uuid and
id must be the content's. A new generation is a new file (the reservation changed
once the real placement was known); readers keep the newest of one lease.

:func:`read_lease` is the only reader: ``O_NOFOLLOW|O_NONBLOCK`` (a symlink or a FIFO
costs nothing), a regular file owned by the uid its name says, not writable by
group or others, with one link, at most :data:`MAX_FILE_BYTES`, every field type- and range-checked.
Anything else is a :class:`BadLeaseFile` naming the file, its owner and why.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import stat
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..._format import format_bytes
from ..._process_identity import ProcessIdentity
from ..._records import Record

#: The lease files' format version.
VERSION = 2
#: A lease file is a few hundred bytes; anything larger is not one (and is not read past this).
MAX_FILE_BYTES = 4096
#: The most one lease may reserve when the GPU's total is unknown (1 PiB: no GPU is larger).
MAX_RESERVED_BYTES = 2**50
#: Suffix of an administrator's revocation of a lease file (see :mod:`.folder`).
REVOKED_SUFFIX = ".revoked"

Watch = Literal["heartbeat", "pid"]

_NAME = re.compile(r"^((?:GPU|MIG)-[A-Za-z0-9_-]{1,120})\.u(\d{1,10})\.([0-9a-f]{12})\.(\d{1,6})\.lease$")
#: A lease file's name (groups: the GPU uuid as in file names, the uid, the lease id, the generation).
LEASE_NAME_RE = _NAME
_LEASE_ID = re.compile(r"^[0-9a-f]{12}$")
_UUID = re.compile(r"^(?:GPU|MIG)-[A-Za-z0-9/_-]{1,120}$")
_BOOT_ID = re.compile(r"^[0-9a-fA-F-]{1,64}$")


def is_gpu_uuid(text: str) -> bool:
    """Whether ``text`` looks like an NVML GPU or MIG UUID (``GPU-…``, ``MIG-…``)."""
    return bool(_UUID.match(text))


def duration_str(seconds: float | None) -> str:
    """``7200 -> '2 h'``, ``1800 -> '30 min'``, ``12 -> '12 s'``: for "idle 2 h".

    Example:
        >>> duration_str(7200), duration_str(1800), duration_str(12.4)
        ('2 h', '30 min', '12 s')
    """
    if seconds is None:
        return "N/A"
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def user_name(uid: int) -> str:
    """The passwd name of ``uid``, or ``"uid 1234"`` for a uid without one (containers)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


@dataclass(frozen=True)
class Lease(Record):
    """One reservation of memory on one GPU, as a reader found it.

    Attributes:
        lease_id: unique id (12 hex digits); what ``workbench leases release`` takes.
        gpu_uuid: NVML's UUID of the GPU (``"GPU-…"`` or ``"MIG-…"``).
        device: the holder's name for the GPU (``"cuda:0"``); others may number it differently.
        uid: the lease file's owner (the file system's word, not the file's).
        owner: that uid's user name.
        hub_user: the holder's ``$JUPYTERHUB_USER``, a label it chose (``None``: not on a hub).
        host: the holder's host name.
        process: the holding process (a kernel, or a serving engine): PID, start,
            PID namespace and boot (:class:`~workbench._process_identity.ProcessIdentity`).
        model: the model the memory is for.
        reserved_bytes: bytes reserved on this GPU (at most the GPU's memory once counted).
        created_s: when it was taken (``time.time()``).
        heartbeat_s: the holder's last heartbeat (the file's ctime, never later than now).
        last_used_s: when the model last generated (``None``: not yet; idle since ``created_s``).
        watch: ``"heartbeat"`` (a kernel that heartbeats) or ``"pid"`` (an engine, judged by its PID).
        granted: ``False`` while its holder is still checking the claim.
        file: the lease file's name in the lease folder.
        generation: the file's generation (a new one when the reservation changed).
    """

    _json_properties = ("pid", "holder")
    _json_exclude = ("file", "generation")

    lease_id: str
    gpu_uuid: str
    device: str
    uid: int
    owner: str
    host: str
    process: ProcessIdentity
    model: str
    reserved_bytes: int
    created_s: float
    heartbeat_s: float
    hub_user: str | None = None
    last_used_s: float | None = None
    watch: Watch = "heartbeat"
    granted: bool = True
    file: str = ""
    generation: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def holder(self) -> str:
        """``"alice"``, or ``"jovyan (hub user alice)"`` when the hub user is not the file's owner."""
        if self.hub_user and self.hub_user != self.owner:
            return f"{self.owner} (hub user {self.hub_user})"
        return self.owner

    @property
    def reserved_str(self) -> str:
        return format_bytes(self.reserved_bytes)

    def idle_s(self, now: float | None = None) -> float:
        """Seconds since the model last generated (or since the lease was taken)."""
        now = time.time() if now is None else now
        return max(0.0, now - (self.last_used_s if self.last_used_s is not None else self.created_s))

    def heartbeat_age_s(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return max(0.0, now - self.heartbeat_s)

    def describe(self, device: str | None = None, now: float | None = None) -> str:
        """``"cuda:0: 30.1 GiB leased by alice (Mixtral-8x7B, kernel 4242, idle 2 h)"``.

        Args:
            device: the GPU's name in the reader's numbering (default: the holder's).
        """
        who = "kernel" if self.watch == "heartbeat" else "process"
        return (f"{device or self.device}: {self.reserved_str} leased by {self.holder} "
                f"({self.model}, {who} {self.pid}, idle {duration_str(self.idle_s(now))})")

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready: the fields plus ``pid``, ``holder``, ``idle_s`` and ``heartbeat_age_s``
        (``workbench leases --json``)."""
        d = super().to_dict()
        d["idle_s"] = self.idle_s(now)
        d["heartbeat_age_s"] = self.heartbeat_age_s(now)
        return d

    # -- the file -------------------------------------------------------------------------

    def file_name(self, generation: int | None = None) -> str:
        gen = self.generation if generation is None else generation
        return f"{self.gpu_uuid.replace('/', '_')}.u{self.uid}.{self.lease_id}.{gen}.lease"

    def content(self) -> bytes:
        """What the holder writes: everything the file system does not already say."""
        doc = {
            "version": VERSION, "lease_id": self.lease_id, "gpu_uuid": self.gpu_uuid, "device": self.device,
            "hub_user": self.hub_user, "host": self.host, "pid": self.process.pid,
            "pid_start_ticks": self.process.start_ticks, "pid_create_time_s": self.process.create_time_s,
            "pid_ns": self.process.pid_ns, "boot_id": self.process.boot_id, "model": self.model,
            "reserved_bytes": self.reserved_bytes, "created_s": self.created_s, "watch": self.watch,
        }
        return json.dumps(doc).encode()


@dataclass(frozen=True)
class LeaseName:
    """What a lease file's name says (checked against its owner and content)."""

    gpu_uuid: str
    uid: int
    lease_id: str
    generation: int


def parse_name(name: str) -> LeaseName | None:
    """The parts of a lease file's name, or ``None`` when ``name`` is not one."""
    m = _NAME.match(name)
    if m is None:
        return None
    return LeaseName(m.group(1).replace("_", "/"), int(m.group(2)), m.group(3), int(m.group(4)))


class BadLeaseFile(Exception):
    """A file in the lease folder that is not a lease anyone may count (the reader skips it).

    Attributes:
        name: the file's name; owner: its owner's user name (``None``: unknown); reason: why.
        key: what identifies this version of the file (warned about once).
    """

    def __init__(self, name: str, reason: str, owner: str | None = None, key: tuple[Any, ...] = ()) -> None:
        self.name, self.reason, self.owner, self.key = name, reason, owner, key or (name,)
        super().__init__(f"{name}{f' (owned by {owner})' if owner else ''}: {reason}")


def _str(doc: dict[str, Any], key: str, max_len: int, *, optional: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValueError(f"{key} must be a string of 1 to {max_len} characters, not {_show(value)}")
    return value


def _int(doc: dict[str, Any], key: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{key} must be a whole number from {lo} to {hi}, not {_show(value)}")
    return value


def _float(doc: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number of seconds, not {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_content(raw: bytes, name: LeaseName) -> dict[str, Any]:
    """The validated fields of a lease file's content.

    Raises:
        ValueError: not JSON, a field of the wrong type or out of range, or content that
            contradicts the file's name.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("version") != VERSION:
        raise ValueError(f"format version {_show(doc.get('version'))}, not {VERSION}")
    fields: dict[str, Any] = {
        "lease_id": _str(doc, "lease_id", 12),
        "gpu_uuid": _str(doc, "gpu_uuid", 124),
        "device": _str(doc, "device", 64),
        "hub_user": _str(doc, "hub_user", 128, optional=True),
        "host": _str(doc, "host", 255),
        "model": _str(doc, "model", 512),
        "reserved_bytes": _int(doc, "reserved_bytes", 0, MAX_RESERVED_BYTES),
        "created_s": _float(doc, "created_s"),
    }
    if not _LEASE_ID.match(fields["lease_id"]) or fields["lease_id"] != name.lease_id:
        raise ValueError(f"lease_id {_show(fields['lease_id'])} is not the file name's {name.lease_id}")
    if fields["gpu_uuid"] != name.gpu_uuid:
        raise ValueError(f"gpu_uuid {_show(fields['gpu_uuid'])} is not the file name's {name.gpu_uuid}")
    watch = doc.get("watch")
    if watch not in ("heartbeat", "pid"):
        raise ValueError(f"watch must be 'heartbeat' or 'pid', not {_show(watch)}")
    fields["watch"] = watch
    boot = _str(doc, "boot_id", 64, optional=True)
    if boot is not None and not _BOOT_ID.match(boot):
        raise ValueError(f"boot_id {_show(boot)} is not a boot id")
    fields["process"] = ProcessIdentity(
        _int(doc, "pid", 1, 2**31 - 1),  # type: ignore[arg-type]
        _int(doc, "pid_start_ticks", 0, 2**63 - 1, optional=True),
        _float(doc, "pid_create_time_s", optional=True),
        _int(doc, "pid_ns", 0, 2**63 - 1, optional=True),
        boot,
    )
    return fields


def read_lease(dir_fd: int, file_name: str, *, now: float, total_bytes: int | None = None,
               st: os.stat_result | None = None) -> Lease:
    """Read one lease file in the folder ``dir_fd``, trusting nothing in it.

    Args:
        dir_fd: the lease folder, opened.
        file_name: a name :func:`parse_name` accepts.
        now: the reader's clock; heartbeats and stamps later than it count as ``now``.
        total_bytes: the GPU's memory; a lease never counts for more.
        st: the entry's ``lstat`` from the listing, if the caller has it.

    Raises:
        BadLeaseFile: not a lease anyone may count (see the module doc); names the owner.
    """
    name = parse_name(file_name)
    if name is None:
        raise BadLeaseFile(file_name, "not a lease file name")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(file_name, flags, dir_fd=dir_fd)
    except OSError as exc:
        owner = _owner_of(dir_fd, file_name)
        why = "a symbolic link" if exc.errno == 40 else f"cannot be opened ({exc.strerror or exc})"
        raise BadLeaseFile(file_name, why, owner, key=(file_name, owner, exc.errno)) from None
    try:
        fst = os.fstat(fd)
        owner = user_name(fst.st_uid)
        key = (file_name, fst.st_ino, fst.st_mtime_ns, fst.st_size)
        if not stat.S_ISREG(fst.st_mode):
            raise BadLeaseFile(file_name, "not a regular file", owner, key)
        if fst.st_uid != name.uid:
            raise BadLeaseFile(file_name, f"its name says uid {name.uid} but {owner} owns it", owner, key)
        if fst.st_nlink != 1:  # its holder links it once; a second link is someone else's (see folder._Census)
            raise BadLeaseFile(file_name, f"it has {fst.st_nlink} hard links, a lease file one", owner, key)
        if fst.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise BadLeaseFile(file_name, f"writable by others (mode {stat.S_IMODE(fst.st_mode):04o})", owner, key)
        if fst.st_size > MAX_FILE_BYTES:
            raise BadLeaseFile(file_name, f"{fst.st_size} bytes, more than a lease's {MAX_FILE_BYTES}", owner, key)
        try:
            raw = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise BadLeaseFile(file_name, f"cannot be read ({exc.strerror or exc})", owner, key) from None
        if len(raw) > MAX_FILE_BYTES:
            raise BadLeaseFile(file_name, f"more than a lease's {MAX_FILE_BYTES} bytes", owner, key)
        try:
            fields = parse_content(raw, name)
        except ValueError as exc:
            raise BadLeaseFile(file_name, str(exc), owner, key) from None
    finally:
        os.close(fd)
    cap = min(total_bytes, MAX_RESERVED_BYTES) if total_bytes else MAX_RESERVED_BYTES
    fields["reserved_bytes"] = min(fields["reserved_bytes"], cap)
    created = fields["created_s"] = min(fields["created_s"], now)
    heartbeat = min(fst.st_ctime, now)  # the kernel's stamp: a forged created_s cannot freshen it
    mtime = min(fst.st_mtime, now)
    return Lease(**fields, uid=fst.st_uid, owner=owner, heartbeat_s=heartbeat,
                 last_used_s=mtime if abs(mtime - created) > 1e-3 else None,
                 granted=bool(fst.st_mode & stat.S_IWUSR), file=file_name, generation=name.generation)


def _owner_of(dir_fd: int, file_name: str) -> str | None:
    try:
        return user_name(os.stat(file_name, dir_fd=dir_fd, follow_symlinks=False).st_uid)
    except OSError:
        return None


def with_reservation(lease: Lease, reserved_bytes: int) -> Lease:
    """The next generation of ``lease``, reserving ``reserved_bytes``."""
    return replace(lease, reserved_bytes=int(reserved_bytes), generation=lease.generation + 1)
