"""The shared lease folder: whom it may belong to, and every file operation in it.

Every user of the machine writes lease files into one folder (the setting
``lease_dir``), so the folder's rules are what make a lease its holder's:

* It must be a real directory (not a symlink), owned by root or by the caller, and,
  if others may write in it, sticky (mode ``1777`` like ``/tmp``): then anyone may add
  a file and only its owner (or root) may delete or rename it. A folder owned by
  another user is refused, because its owner could delete or replace anyone's
  leases; so is one whose parent folders others could rename it in. Refusing is
  the safe side: the caller's GPU load stops with the reason, instead of going on
  with a lease nobody else can see.
* A lease file is created under a random temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``),
  written in full, then linked to its real name (``link`` never replaces a name), so
  a reader sees a whole file or none. After that nobody writes it again; only its
  owner touches it (the heartbeat) or deletes it.
* The folder is listed with ``scandir`` in one pass, and each lease is read by
  :func:`~.record.read_lease`; a bad file is skipped with one warning per version of
  it (name, inode, mtime, size), naming its owner. Anyone can fill the folder, so a
  listing never gives up because it is full: names that are no lease's cost a string
  test, and a user who owns more lease-like files than :data:`MAX_FILES_PER_UID` is
  left out whole, with one warning naming them, while everyone else's leases are read
  (see :class:`_Census`). Only a folder too big to list in :data:`LIST_BUDGET_S` is
  refused, naming who owns its entries.
* Root may delete anyone's lease file (``workbench leases release ID --force``). A
  member of the setting ``lease_admin_group`` may not delete files in a sticky folder
  (only root may), so a forced release by one writes a revocation beside the lease
  (``<lease file>.revoked``, given the administrators' group, which the kernel lets only
  members do); every reader whose settings name that group ignores the revoked lease,
  and its holder deletes it at its next heartbeat.

Everything is done relative to the folder's file descriptor, opened once per
operation with ``O_NOFOLLOW|O_DIRECTORY`` and checked with ``fstat``, so the folder
cannot be swapped between the check and the use.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import LeaseError, LeaseFolderError
from .record import (
    LEASE_NAME_RE,
    REVOKED_SUFFIX,
    BadLeaseFile,
    Lease,
    LeaseName,
    parse_name,
    read_lease,
    user_name,
)

logger = logging.getLogger("workbench.devices.leases")

#: The most files one uid may own in the folder before a reader leaves them all out (one warning
#: naming that uid). A holder has one file per holding process and GPU, briefly one more while its
#: reservation changes, and a revocation at most: 4096 is 256 kernels on 8 GPUs each with a spare
#: file, enough for a whole team under one container uid (DockerSpawner), and reading that many
#: costs a reader well under a second. Past it the files are one user's junk, and cost only that user.
MAX_FILES_PER_UID = 4096
#: The longest one listing of the folder may take. Names that are no lease's cost a string test each,
#: lease-like names one ``lstat`` (a million planted files list in a few seconds on a busy 2-core
#: machine, see bench/bench_lease_flood.py); past this the folder is refused (a listing cut short could
#: miss leases), naming the users who own the most entries.
LIST_BUDGET_S = 30.0
#: Prefix of the temporary files a lease is written in before it is linked to its name
#: (``.tmp-u<uid>-<random>``: a reader looks at its own only, to clean up after a crash).
TMP_PREFIX = ".tmp-"
#: Bad files warned about one by one (once each) per owner and listing; the rest of that owner's in one
#: line, so that an owner's 4096 planted files cannot flood the log nor the memory of what was warned.
WARN_PER_OWNER = 64
#: A temporary file older than this was left by a holder that died while writing; its owner removes it.
TMP_MAX_AGE_S = 60.0
#: Distinct bad files remembered so that each is warned about once.
WARNED_MAX = 4096

_warned: OrderedDict[tuple[object, ...], None] = OrderedDict()
_warned_lock = threading.Lock()


def warn_once(folder: Path, bad: BadLeaseFile) -> None:
    """Log ``bad`` once per version of the file (its name, inode, mtime and size)."""
    _warn_key((str(folder), *bad.key), "lease folder %s: skipping %s", folder, bad)


def is_lease_admin(admin_group: str) -> bool:
    """Whether this process may release other users' leases: root, or a member of ``admin_group``
    (checked against the process's real credentials, ``os.getgroups()``, not any file's content)."""
    if os.geteuid() == 0:
        return True
    gid = _group_id(admin_group)
    return gid is not None and (gid in os.getgroups() or gid == os.getegid())


def revoked_by_admin(revocation: os.stat_result, admin_group: str, folder_setgid: bool) -> bool:
    """Whether a revocation file was made by an administrator: owned by root, or given the group
    ``admin_group`` by its owner, which the kernel allows only to members of that group (not in a
    setgid folder, where every file gets the folder's group)."""
    if revocation.st_uid == 0:
        return True
    gid = _group_id(admin_group)
    return gid is not None and revocation.st_gid == gid and not folder_setgid


def _group_id(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass
class Listing:
    """What one pass over the folder found.

    Attributes:
        leases: every readable lease (newest generation of each), stale ones included.
        superseded: older generations still present (counted once, through the newest).
        revoked: revocations found: ``{(holder uid, lease id): the revocation file's stat}``.
        bad: the files skipped, each with its owner and reason (a left-out owner as one entry).
        flooded: ``{uid: entries seen}`` of the owners left out (more than :data:`MAX_FILES_PER_UID`;
            once an owner is left out, names in its uid are passed over without being counted).
    """

    leases: list[Lease] = field(default_factory=list)
    superseded: list[Lease] = field(default_factory=list)
    revoked: dict[tuple[int, str], os.stat_result] = field(default_factory=dict)
    bad: list[BadLeaseFile] = field(default_factory=list)
    flooded: dict[int, int] = field(default_factory=dict)


class LeaseFolder:
    """The lease folder at ``path`` (see the module doc for its rules).

    Args:
        path: the folder (the setting ``lease_dir``).
        admin_group: the setting ``lease_admin_group`` (``""``: root only).
    """

    def __init__(self, path: str | os.PathLike[str], admin_group: str = "") -> None:
        self.path = Path(path).expanduser()
        self.admin_group = admin_group
        self.setgid = False  # the folder's setgid bit, as last opened (see revoked_by_admin)

    # -- the folder itself --------------------------------------------------------------------

    @contextlib.contextmanager
    def opened(self, *, create: bool = False) -> Iterator[int | None]:
        """The folder's file descriptor, checked; ``None`` when it does not exist and ``create`` is false.

        Raises:
            LeaseFolderError: it is a link or a file, belongs to another user, lets others
                delete leases in it, or cannot be created; the message names it and its owner.
        """
        fd = self._open(create)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def _open(self, create: bool) -> int | None:
        self._check_parents()
        _warn_unprotected_hardlinks()
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        made = False
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(self.path, 0o700)
                made = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise LeaseFolderError(
                    f"cannot create the lease folder {self.path}: {exc.strerror or exc}",
                    hint="an administrator creates it once for every user (`install -d -m 1777 "
                         f"{self.path}` as root), or set lease_dir (WORKBENCH_LEASE_DIR) elsewhere",
                    path=str(self.path), owner=None) from None
            fd = self._open_existing(flags)
        except OSError as exc:
            raise self._not_a_folder(exc) from None
        try:
            st = os.fstat(fd)
            if made and st.st_uid == os.geteuid():
                os.fchmod(fd, 0o1777)  # mkdir's mode went through the umask; fchmod does not
                st = os.fstat(fd)
            self._check(st)
            self.setgid = bool(st.st_mode & stat.S_ISGID)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_existing(self, flags: int) -> int:
        try:
            return os.open(self.path, flags)
        except OSError as exc:
            raise self._not_a_folder(exc) from None

    def _not_a_folder(self, exc: OSError) -> LeaseFolderError:
        owner = _lstat_owner(self.path)
        try:
            link = stat.S_ISLNK(os.lstat(self.path).st_mode)
        except OSError:
            link = False
        what = "is a symbolic link" if link else {errno.ELOOP: "is a symbolic link", errno.ENOTDIR: "is not a folder"}.get(
            exc.errno or 0, f"cannot be opened ({exc.strerror or exc})")
        return LeaseFolderError(
            f"the lease folder {self.path} {what}{f' (owned by {owner})' if owner else ''}",
            hint="an administrator should remove it and create the folder as root (`install -d -m 1777 "
                 f"{self.path}`), or set lease_dir (WORKBENCH_LEASE_DIR) elsewhere",
            path=str(self.path), owner=owner)

    def _check(self, st: os.stat_result) -> None:
        owner = user_name(st.st_uid)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, os.geteuid()):
            raise LeaseFolderError(
                f"the lease folder {self.path} belongs to {owner}, who could delete or replace every "
                "other user's leases in it; no lease is taken there",
                hint="an administrator should remove it and create it as root (`install -d -m 1777 "
                     f"{self.path}`), or set lease_dir (WORKBENCH_LEASE_DIR) to a root-owned sticky folder",
                path=str(self.path), owner=owner)
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            raise LeaseFolderError(
                f"the lease folder {self.path} (owned by {owner}, mode {mode:04o}) lets others delete "
                "and rename every lease in it (writable without the sticky bit); no lease is taken there",
                hint=f"an administrator should run `chmod 1777 {self.path}`", path=str(self.path), owner=owner)

    def _check_parents(self) -> None:
        """Refuse a folder that another user could rename away and replace (through a parent folder)."""
        try:
            parent = Path(os.path.realpath(self.path.parent))
        except OSError:
            return
        for p in (parent, *parent.parents):
            try:
                st = os.stat(p)
            except OSError:
                continue  # missing parents: creating the folder will fail and say so
            mode = stat.S_IMODE(st.st_mode)
            others_write = mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX
            if st.st_uid not in (0, os.geteuid()) or others_write:
                raise LeaseFolderError(
                    f"the lease folder {self.path} is inside {p} (owned by {user_name(st.st_uid)}, mode "
                    f"{mode:04o}), where another user could replace it; no lease is taken there",
                    hint="set lease_dir (WORKBENCH_LEASE_DIR) to a folder whose parents only root may change "
                         "(for example /tmp/workbench-leases or /run/workbench-leases)",
                    path=str(self.path), owner=user_name(st.st_uid))

    # -- reading --------------------------------------------------------------------------------

    def list(self, fd: int, *, gpu_uuid: str | None = None, now: float,
             totals: dict[str, int | None] | None = None) -> Listing:
        """Every lease in the folder (on one GPU when ``gpu_uuid`` is given); bad files warned about once.

        One pass of ``scandir``, then the reads (see :class:`_Census` for what one user's files
        may cost the others). A user who owns more than :data:`MAX_FILES_PER_UID` of the entries
        that may be leases is left out whole, with one warning naming that user.

        Raises:
            LeaseFolderError: the pass took more than :data:`LIST_BUDGET_S` (the listing would
                be incomplete, so nothing is counted); names the users with the most entries.
        """
        census = _Census(self, fd, gpu_uuid, time.monotonic() + LIST_BUDGET_S)
        with os.scandir(fd) as it:
            for entry in it:
                census.add(entry, now)
        return census.read(now, totals or {})

    def _not_regular(self, entry: os.DirEntry[str]) -> BadLeaseFile:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return BadLeaseFile(entry.name, "not a regular file")
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        owner = user_name(st.st_uid)
        return BadLeaseFile(entry.name, kind, owner, key=(entry.name, st.st_ino, st.st_mtime_ns, kind))

    def _clean_tmp(self, fd: int, entry: os.DirEntry[str], me: int, now: float) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_uid == me and stat.S_ISREG(st.st_mode) and now - st.st_mtime > TMP_MAX_AGE_S:
                os.unlink(entry.name, dir_fd=fd)
        except OSError:
            pass

    def is_revoked(self, listing: Listing, lease: Lease) -> bool:
        """Whether an administrator (root, or a member of ``admin_group`` as this reader's settings say)
        revoked ``lease``."""
        st = listing.revoked.get((lease.uid, lease.lease_id))
        return st is not None and st.st_uid != lease.uid and revoked_by_admin(st, self.admin_group, self.setgid)

    def revocation_of(self, fd: int, lease: Lease) -> os.stat_result | None:
        """The administrator's revocation of ``lease``, if there is one (see :meth:`is_revoked`)."""
        for generation in range(lease.generation + 1):  # revoked under any name the lease has had
            try:
                st = os.stat(lease.file_name(generation) + REVOKED_SUFFIX, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid != lease.uid and revoked_by_admin(st, self.admin_group,
                                                                                          self.setgid):
                return st
        return None

    # -- writing (only ever our own files) -----------------------------------------------------

    def create(self, fd: int, lease: Lease, *, granted: bool) -> int:
        """Write ``lease`` as a new file, whole, and return a descriptor of it (to grant it later).

        The content goes to a temporary file first, then ``link`` gives it its name: a reader
        never sees a half-written lease, and an existing name is never replaced.

        Raises:
            FileExistsError: the name is taken (pick another lease id).
            LeaseFolderError: the folder is not writable by this user.
        """
        tmp = f"{TMP_PREFIX}u{os.geteuid()}-{secrets.token_hex(8)}"
        try:
            tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=fd)
        except PermissionError as exc:
            raise LeaseFolderError(f"cannot write in the lease folder {self.path}: {exc.strerror or exc}",
                                   hint=f"an administrator should make it writable by every user "
                                        f"(`chmod 1777 {self.path}`)",
                                   path=str(self.path), owner=_lstat_owner(self.path)) from None
        except FileExistsError:
            raise
        except OSError as exc:  # ENOSPC (no space or inodes left), EMLINK (a full folder), EROFS...
            raise LeaseFolderError(
                f"cannot write a lease file in the lease folder {self.path}: {exc.strerror or exc}",
                hint="an administrator should check that its file system has free space and inodes "
                     f"(`df -i {self.path}`) and remove what is not a lease from it",
                path=str(self.path), owner=_lstat_owner(self.path)) from None
        linked = False
        try:
            view = memoryview(lease.content())
            while view:
                view = view[os.write(tfd, view):]
            os.fchmod(tfd, 0o644 if granted else 0o444)
            created_ns = int(lease.created_s * 1e9)
            os.utime(tfd, ns=(created_ns, created_ns))  # mtime = last use = not yet
            os.link(tmp, lease.file_name(), src_dir_fd=fd, dst_dir_fd=fd)
            linked = True
            # Readers pass over a file with two links (see _Census): the claim counts from here on.
            os.unlink(tmp, dir_fd=fd)
        except BaseException as exc:
            os.close(tfd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            if linked:
                with contextlib.suppress(OSError):
                    os.unlink(lease.file_name(), dir_fd=fd)
            if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
                raise LeaseFolderError(
                    f"cannot write a lease file in the lease folder {self.path}: {exc.strerror or exc}",
                    hint="an administrator should check that its file system has free space and inodes "
                         f"(`df -i {self.path}`) and remove what is not a lease from it",
                    path=str(self.path), owner=_lstat_owner(self.path)) from None
            raise
        return tfd

    def grant(self, file_fd: int) -> None:
        """Mark a claim granted (the owner-write bit; see :mod:`.record`)."""
        os.fchmod(file_fd, 0o644)

    def touch(self, fd: int, lease: Lease, last_used_s: float | None) -> float | None:
        """The heartbeat: set the file's mtime to the last use (its ctime becomes now).

        Returns:
            The new heartbeat (the file's ctime), or ``None`` when the file is gone.
        """
        mtime = last_used_s if last_used_s is not None else lease.created_s
        name = lease.file_name()
        try:
            # Once root deleted it, anyone may take the name: a file that is not ours is no heartbeat
            # of ours (and touching it failed, which stopped the beat of every lease after it).
            if os.stat(name, dir_fd=fd, follow_symlinks=False).st_uid != os.geteuid():
                return None
            os.utime(name, ns=(time.time_ns(), int(mtime * 1e9)), dir_fd=fd, follow_symlinks=False)
            return os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime
        except (FileNotFoundError, PermissionError):
            return None

    def remove_own(self, fd: int, file_name: str) -> bool:
        """Delete one of this user's lease files; never another's. Returns whether it was there."""
        try:
            st = os.stat(file_name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            self._remove_revocation(fd, file_name)
            return False
        parsed = parse_name(file_name)
        if st.st_uid != os.geteuid() or parsed is None or parsed.uid != st.st_uid:
            raise LeaseError(f"{file_name} in {self.path} is not this user's lease file; it is left alone",
                             path=str(self.path))
        try:
            os.unlink(file_name, dir_fd=fd)
        except FileNotFoundError:
            return False
        self._remove_revocation(fd, file_name)
        return True

    def _remove_revocation(self, fd: int, file_name: str) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(file_name + REVOKED_SUFFIX, dir_fd=fd, follow_symlinks=False)
            if st.st_uid == os.geteuid():
                os.unlink(file_name + REVOKED_SUFFIX, dir_fd=fd)

    def remove_others(self, fd: int, lease: Lease, files: list[str]) -> str:
        """An administrator's forced release: delete the files (root), else revoke the lease.

        Returns:
            ``"deleted"`` or ``"revoked"``.
        """
        if os.geteuid() == 0:
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            return "deleted"
        name = lease.file + REVOKED_SUFFIX
        try:
            rfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        except FileExistsError:
            # Revoked already, or a file its holder (or anyone) put there first to keep the lease from
            # being revoked: only a revocation readers will honour counts as done.
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid != lease.uid and revoked_by_admin(st, self.admin_group,
                                                                                          self.setgid):
                return "revoked"
            raise LeaseError(
                f"lease {lease.lease_id} ({lease.describe()}) cannot be revoked: {name} in {self.path} already "
                f"exists, made by {user_name(st.st_uid)}, not by an administrator; the lease stays",
                hint=f"root can release it (`sudo workbench leases release {lease.lease_id} --force`) or delete "
                     f"that file", lease_id=lease.lease_id, path=str(self.path)) from None
        try:
            os.fchmod(rfd, 0o644)
            gid = _group_id(self.admin_group)
            if gid is not None:
                os.fchown(rfd, -1, gid)  # the kernel's proof that we belong to the group
        finally:
            os.close(rfd)
        return "revoked"


class _Census:
    """One listing's pass over the folder, so that one user's files cost only that user.

    * A name that is no lease file's, revocation's or this user's temporary file is passed over
      with a string test (no system call): junk with any other name costs the time to list it.
    * Every other entry gets one ``lstat`` and is counted against its owner (``st_uid``, the file
      system's word, never the name's). An owner with more than :data:`MAX_FILES_PER_UID` such
      entries is left out whole: its leases are not counted, its files not read, one warning
      names it. Nobody but root can make a file owned by someone else, so only that owner's own
      junk counts against it (hard links aside, next point).
    * A regular file with more than one link is passed over: a lease file has exactly one, once
      written (``create`` links it under its name, then unlinks the temporary name). A file in
      that instant belongs to a claimant that has not listed yet, so it will count whatever this
      reader grants (see :mod:`.book`); any other second link is a hard link someone else made
      (possible only where ``fs.protected_hardlinks`` is off), which must not make a file count
      twice, under another generation, or against its owner.
    * Leases are read after the pass, only for owners not left out; a lease-like name whose
      owner is not the uid in the name is bad at once, without being opened.

    Memory: at most :data:`MAX_FILES_PER_UID` names per owner (an owner past it keeps a count).
    Time: :data:`LIST_BUDGET_S` for the pass and the reads together.
    """

    def __init__(self, folder: LeaseFolder, fd: int, gpu_uuid: str | None, deadline: float) -> None:
        self.folder, self.fd, self.deadline = folder, fd, deadline
        self.gpu = gpu_uuid.replace("/", "_").lower() if gpu_uuid is not None else None  # as in file names
        self.me = os.geteuid()
        self.my_tmp = f"{TMP_PREFIX}u{self.me}-"
        self.seen = 0
        self.per_owner: dict[int, int] = {}
        self.flooded: set[int] = set()
        self.leases: dict[int, list[str]] = {}
        self.revoked: dict[int, list[tuple[LeaseName, os.stat_result]]] = {}
        self.bad: dict[int, list[BadLeaseFile]] = {}

    def _check_time(self) -> None:
        self.seen += 1
        if not self.seen & 511 and time.monotonic() > self.deadline:
            raise self._too_slow()

    def _too_slow(self) -> LeaseFolderError:
        top = sorted(self.per_owner.items(), key=lambda kv: -kv[1])[:3]
        who = ", ".join(f"{user_name(uid)} owns {n}" for uid, n in top) or "none of them a lease's"
        path = self.folder.path
        return LeaseFolderError(
            f"listing the lease folder {path} took more than {LIST_BUDGET_S:.0f} s ({self.seen} entries "
            f"looked at so far: {who}); no lease is taken while it cannot be read whole",
            hint=f"an administrator should remove what is not a lease from it (`find {path} -user NAME -delete` "
                 "for the owner of the junk)", path=str(path), owner=user_name(top[0][0]) if top else None)

    def add(self, entry: os.DirEntry[str], now: float) -> None:
        """Look at one entry of the scan (cheaply when its name cannot be a lease's: this runs once per
        entry, a million times in a flooded folder, so it avoids every call it can)."""
        self.seen += 1
        if not self.seen & 511 and time.monotonic() > self.deadline:
            raise self._too_slow()
        name = entry.name
        if name[-6:] == ".lease":
            kind, m = "lease", LEASE_NAME_RE.match(name)
        elif name.startswith(TMP_PREFIX):
            if name.startswith(self.my_tmp):
                self.folder._clean_tmp(self.fd, entry, self.me, now)
            return
        elif name.endswith(REVOKED_SUFFIX):
            kind, m = "revoked", LEASE_NAME_RE.match(name[: -len(REVOKED_SUFFIX)])
        else:
            return
        if m is None or (self.gpu is not None and m.group(1).lower() != self.gpu):
            return
        if kind == "lease" and int(m.group(2)) in self.flooded:
            return  # a true lease under that name would be the left-out owner's: no need to look
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return  # gone meanwhile (a release)
        if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
            logger.debug("lease folder %s: %s has %d links; passed over", self.folder.path, name, st.st_nlink)
            return
        if self._count(st.st_uid):
            parsed = LeaseName(m.group(1).replace("_", "/"), int(m.group(2)), m.group(3), int(m.group(4)))
            self._keep(entry, kind, parsed, st)

    def _count(self, uid: int) -> bool:
        """Count one more entry of ``uid``; whether it is still to be kept (``uid`` not left out)."""
        count = self.per_owner[uid] = self.per_owner.get(uid, 0) + 1
        if uid in self.flooded:
            return False
        if count > MAX_FILES_PER_UID:
            self.flooded.add(uid)
            for kept in (self.leases, self.revoked, self.bad):
                kept.pop(uid, None)
            return False
        return True

    def _keep(self, entry: os.DirEntry[str], kind: str, parsed: LeaseName, st: os.stat_result) -> None:
        uid = st.st_uid
        if kind == "revoked":
            if stat.S_ISREG(st.st_mode):
                self.revoked.setdefault(uid, []).append((parsed, st))
        elif not stat.S_ISREG(st.st_mode):
            self.bad.setdefault(uid, []).append(self.folder._not_regular(entry))
        elif uid != parsed.uid:
            self.bad.setdefault(uid, []).append(BadLeaseFile(
                entry.name, f"its name says uid {parsed.uid} but {user_name(uid)} owns it", user_name(uid),
                key=(entry.name, st.st_ino, st.st_mtime_ns, st.st_size)))
        else:
            self.leases.setdefault(uid, []).append(entry.name)

    def read(self, now: float, totals: dict[str, int | None]) -> Listing:
        """Read the leases of every owner not left out; warn about the rest."""
        found = Listing()
        newest: dict[tuple[int, str], Lease] = {}
        for uid, names in self.leases.items():
            for name in names:
                lease = self._read_one(uid, name, now, totals)
                if lease is None:
                    continue
                key = (lease.uid, lease.lease_id)
                prev = newest.get(key)
                if prev is None or lease.generation > prev.generation:
                    if prev is not None:
                        found.superseded.append(prev)
                    newest[key] = lease
                else:
                    found.superseded.append(lease)
        found.leases = list(newest.values())
        for revocations in self.revoked.values():
            for parsed, st in revocations:
                found.revoked[(parsed.uid, parsed.lease_id)] = st
        self._report(found)
        return found

    def _read_one(self, uid: int, name: str, now: float, totals: dict[str, int | None]) -> Lease | None:
        self._check_time()
        parsed = parse_name(name)
        assert parsed is not None
        try:
            return read_lease(self.fd, name, now=now, total_bytes=totals.get(parsed.gpu_uuid))
        except BadLeaseFile as bad:
            self.bad.setdefault(uid, []).append(bad)
        except OSError as exc:  # the entry went away while we looked (a release)
            logger.debug("lease file %s vanished while read: %s", name, exc)
        return None

    def _report(self, found: Listing) -> None:
        """The bad files and left-out owners into ``found``, and their warnings (each once)."""
        for uid, bad in self.bad.items():
            found.bad.extend(bad)
            for one in bad[:WARN_PER_OWNER]:
                warn_once(self.folder.path, one)
            if len(bad) > WARN_PER_OWNER:
                _warn_key((str(self.folder.path), "bad files of", uid),
                          "lease folder %s: skipping %d more bad files owned by %s",
                          self.folder.path, len(bad) - WARN_PER_OWNER, user_name(uid))
        for uid in sorted(self.flooded):
            n = self.per_owner[uid]
            found.flooded[uid] = n
            owner = user_name(uid)
            found.bad.append(BadLeaseFile(
                f"(more than {MAX_FILES_PER_UID} files)", f"more lease-like files than one user may have there "
                f"({n} seen): none of them is read, and no lease of theirs is counted", owner, key=("flooded", uid)))
            _warn_key((str(self.folder.path), "flooded", uid),
                      "lease folder %s: %s owns more lease-like files than the %d one user may have there (%d seen); "
                      "none of them is read and no lease of %s is counted (an administrator should remove them)",
                      self.folder.path, owner, MAX_FILES_PER_UID, n, owner)


def _warn_key(key: tuple[object, ...], message: str, *args: object) -> None:
    """Log ``message`` once per ``key``, remembering at most :data:`WARNED_MAX` keys."""
    with _warned_lock:
        if key in _warned:
            _warned.move_to_end(key)
            return
        _warned[key] = None
        while len(_warned) > WARNED_MAX:
            _warned.popitem(last=False)
    logger.warning(message, *args)


def _warn_unprotected_hardlinks() -> None:
    """Warn once where the kernel lets anyone hard-link anyone's file (``fs.protected_hardlinks`` 0):
    a second link to a lease file makes readers pass it over (see :class:`_Census`), so there any
    user can hide another's lease."""
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as f:
            off = f.read(8).strip() == b"0"
    except OSError:
        return
    if off:
        _warn_key(("protected_hardlinks",),
                  "fs.protected_hardlinks is 0 on this machine: any user can hard-link another's lease file, "
                  "which hides that lease from every reader; an administrator should run "
                  "`sysctl fs.protected_hardlinks=1` (the default of every major distribution)")


def _lstat_owner(path: Path) -> str | None:
    try:
        return user_name(os.lstat(path).st_uid)
    except OSError:
        return None


__all__ = ["Listing", "LeaseFolder", "is_lease_admin", "revoked_by_admin", "warn_once"]
