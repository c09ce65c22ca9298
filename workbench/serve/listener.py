"""Who is listening on a loopback port: the proof that an answer comes from the engine the workbench started.

On a shared machine a port is first come, first served, and an engine's port is
public (it is on the command line, in ``/proc/PID/cmdline``): another user can bind
it while the engine loads, answer the readiness probe and read every prompt. So
before anything is sent to an engine (the readiness probe with its key, every
prompt), the listening sockets that a connection to ``127.0.0.1:PORT`` could reach
are looked up and each must belong to the engine's own processes (the engine, its
process group, its descendants: vLLM's API servers may be children).

On Linux the kernel's socket table (``/proc/net/tcp``, ``/proc/net/tcp6``) names
every listening socket with its inode and its owner's uid; a process's sockets are
the ``socket:[INODE]`` links under ``/proc/PID/fd``, readable for one's own processes
only. A socket held by a process we cannot inspect is, by that fact, not ours. Where
there is no ``/proc``, psutil's per-process connection list stands in (the holder is
then named by what psutil can see).

Why our own code: psutil's connection records carry no inode-to-uid mapping for
sockets of processes we cannot inspect, which is exactly the case that matters; the
table is a few lines to read.

Example:
    >>> check_listener(engine_pid, "127.0.0.1", 8000).ours  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"
#: Bytes of a socket table read (a machine with 100k sockets: ~15 MB).
_TABLE_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Listener:
    """A listening socket a connection to the port could reach, and who holds it.

    Attributes:
        address: the address it is bound to (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
        port: the port.
        uid: its owner's uid (from the kernel's table); ``None`` where unknown.
        inode: the socket's inode (Linux); ``None`` elsewhere.
        pid: a process holding it, when one can be seen from here; ``None`` otherwise.
        command: that process's command line (public on Linux), shortened.
    """

    address: str
    port: int
    uid: int | None
    inode: int | None = None
    pid: int | None = None
    command: str | None = None

    @property
    def user(self) -> str | None:
        if self.uid is None:
            return None
        try:
            import pwd

            return pwd.getpwuid(self.uid).pw_name
        except (KeyError, ImportError):
            return f"uid {self.uid}"

    def describe(self) -> str:
        who = f"user {self.user} (uid {self.uid})" if self.uid is not None else "an unknown user"
        proc = f"PID {self.pid} ({self.command})" if self.pid else "a process this user cannot inspect"
        return f"{proc} of {who}, listening on {self.address}:{self.port}"


@dataclass(frozen=True)
class ListenerCheck:
    """What :func:`check_listener` found.

    Attributes:
        listeners: every listening socket a connection to the address could reach.
        foreign: those that are not the engine's.
    """

    listeners: tuple[Listener, ...]
    foreign: tuple[Listener, ...]

    @property
    def listening(self) -> bool:
        return bool(self.listeners)

    @property
    def ours(self) -> bool:
        """Something listens, and every listener is the engine's."""
        return bool(self.listeners) and not self.foreign

    def describe_foreign(self) -> str:
        return "; ".join(h.describe() for h in self.foreign)


def _ipv4_hex(host: str) -> str:
    return socket.inet_aton(host)[::-1].hex().upper()  # /proc/net/tcp: the 32-bit word in host (little-endian) order


def _reachable_hex(host: str) -> dict[str, set[str]]:
    """Local addresses (as the tables write them) whose listeners accept connections to ``host``."""
    v4 = {_ipv4_hex(host), "00000000"}
    # tcp6: a dual-stack wildcard, or the IPv4-mapped address (::ffff:a.b.c.d), word by word little-endian.
    mapped = "0000000000000000FFFF0000" + _ipv4_hex(host)
    mapped_any = "0000000000000000FFFF000000000000"
    return {"tcp": v4, "tcp6": {"0" * 32, mapped, mapped_any}}


def _read_table(path: str) -> list[str]:
    chunks, got = [], 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while got < _TABLE_MAX_BYTES:  # read() of the whole bound would allocate it each time
                chunk = fh.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except OSError:
        return []
    return b"".join(chunks).decode("ascii", "replace").splitlines()[1:]


def _format_address(kind: str, hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if kind == "tcp":
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listeners(host: str, port: int) -> list[Listener] | None:
    """Listening TCP sockets a connection to ``host:port`` could reach, from the kernel's tables.

    Returns:
        The listeners (possibly empty), or ``None`` where the tables cannot be read (no ``/proc``).
    """
    if not os.path.exists("/proc/net/tcp"):
        return None
    reach = _reachable_hex(host)
    want_port = f"{port:04X}"
    found = []
    for kind in ("tcp", "tcp6"):
        for line in _read_table(f"/proc/net/{kind}"):
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            addr, _, p = fields[1].partition(":")
            if p != want_port or addr not in reach[kind]:
                continue
            try:
                found.append(Listener(_format_address(kind, addr), port, int(fields[7]), int(fields[9])))
            except ValueError:
                continue
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds (empty when its descriptors cannot be read: not ours)."""
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                continue
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def engine_processes(pid: int) -> set[int]:
    """The engine ``pid``, its descendants, and the members of its process group (it leads one)."""
    import psutil

    pids = {pid}
    try:
        pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        pass
    pids.update(group_members(pid))
    return pids


def _command(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()[:4096]
    except OSError:
        return None
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return (text[:160] + "...") if len(text) > 160 else text or None


def _holder_pid(inode: int) -> int | None:
    """A process holding socket ``inode``, among those whose descriptors this user may read."""
    target = f"socket:[{inode}]"
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") == target:
                    return pid
            except OSError:
                continue
    return None


def _named(listener: Listener) -> Listener:
    pid = _holder_pid(listener.inode) if listener.inode is not None else listener.pid
    if pid is None:
        return listener
    return Listener(listener.address, listener.port, listener.uid, listener.inode, pid, _command(pid))


def check_listener(engine_pid: int, host: str, port: int) -> ListenerCheck:
    """Whether every socket listening where a connection to ``host:port`` goes is the engine's.

    Args:
        engine_pid: the engine the workbench started (it leads its own process group).

    Returns:
        A :class:`ListenerCheck`; ``foreign`` holders are named (PID and command where visible,
        the owner's uid always on Linux).
    """
    found = listeners(host, port)
    if found is None:
        return _check_with_psutil(engine_pid, host, port)
    if not found:
        return ListenerCheck((), ())
    # The engine itself first (transformers serve and a single vLLM API server hold the socket
    # there); its descendants and group only when needed (that walks every process).
    ours = socket_inodes(engine_pid)
    if any(h.inode not in ours for h in found):
        for p in engine_processes(engine_pid):
            ours |= socket_inodes(p)
    # A socket on "::" with IPV6_V6ONLY takes no IPv4 connection, and anyone may bind one beside
    # the engine's: counted as foreign, it let any user refuse every prompt to any engine. A
    # dual-stack "::" socket the kernel would not have let bind beside the engine's IPv4 one (nor
    # the engine's beside it), so while the engine holds an IPv4 listener, "::" is not in reach.
    engine_v4 = any(h.inode in ours and ":" not in h.address for h in found)
    foreign = tuple(_named(h) for h in found if h.inode not in ours and not (engine_v4 and h.address == "::"))
    return ListenerCheck(tuple(found), foreign)


def _check_with_psutil(engine_pid: int, host: str, port: int) -> ListenerCheck:  # pragma: no cover (no /proc)
    import psutil

    wanted = {host, "0.0.0.0", "::", "::ffff:" + host}
    ours = []
    for p in engine_processes(engine_pid):
        try:
            conns = psutil.Process(p).net_connections(kind="tcp")
        except psutil.Error:
            continue
        ours += [c for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                 and c.laddr.ip in wanted]
    try:
        every = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr
                 and c.laddr.port == port and c.laddr.ip in wanted]
    except psutil.Error:
        every = list(ours)
    mine = {(c.laddr.ip, c.laddr.port) for c in ours}
    all_listeners = tuple(Listener(c.laddr.ip, port, None, None, c.pid) for c in every) or \
        tuple(Listener(c.laddr.ip, port, os.getuid()) for c in ours)
    foreign = tuple(h for h in all_listeners if (h.address, h.port) not in mine)
    return ListenerCheck(all_listeners, foreign)


def holders(host: str, port: int) -> list[Listener]:
    """Every listener a connection to ``host:port`` could reach, named (for a "port in use" message)."""
    return [_named(h) for h in (listeners(host, port) or [])]
