"""Another user's IPv6-only socket beside an engine's port cannot make the workbench refuse the engine.

A socket bound to ``[::]:PORT`` with ``IPV6_V6ONLY`` receives no connection to
``127.0.0.1:PORT``, and any user may bind one while the engine listens there. Counted
as a foreign listener, it made every prompt to the engine fail (a denial of service
by any local user). A dual-stack one cannot be bound beside the engine, and one bound
before the engine keeps it from listening: both still make the check fail.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

from multiuser import NOBODY, require_root, start_as
from workbench.serve.listener import check_listener

ENGINE = ("import socket, sys\n"
          "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
          "print(s.getsockname()[1], flush=True); sys.stdin.read()\n")


def _hold_v6(port: int, v6only: int, ready_w: int, done_r: int) -> str:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    try:
        s.bind(("::", port))
        s.listen()
    except OSError as exc:
        os.write(ready_w, b"e")
        return f"refused: {exc.strerror}"
    os.write(ready_w, b"h")
    os.read(done_r, 1)
    return "held"


def _as_nobody_on(port: int, v6only: int, while_held) -> tuple[str, object]:
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = start_as(NOBODY, _hold_v6, port, v6only, ready_w, done_r)
    assert select.select([ready_r], [], [], 30)[0]
    state = os.read(ready_r, 1)
    seen = while_held() if state == b"h" else None
    os.write(done_w, b"x")
    for fd in (ready_r, ready_w, done_r, done_w):
        os.close(fd)
    return child.result(30), seen


def _engine(port: int = 0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    return proc, int(proc.stdout.readline())


def test_an_ipv6_only_socket_beside_the_engine_is_no_impostor():
    require_root()
    engine, port = _engine()
    try:
        assert check_listener(engine.pid, "127.0.0.1", port).ours
        out, seen = _as_nobody_on(port, 1, lambda: check_listener(engine.pid, "127.0.0.1", port))
        assert out == "held"  # the kernel let it bind beside the engine ...
        assert seen.ours
        assert {h.uid for h in seen.listeners} == {0, NOBODY}  # ... and it is seen, yet no impostor
        # A dual-stack one, which would take the engine's connections, cannot bind there at all.
        out, _ = _as_nobody_on(port, 0, lambda: None)
        assert out.startswith("refused")
    finally:
        engine.kill()
        engine.wait(30)


def test_a_socket_that_holds_the_port_first_is_still_an_impostor():
    require_root()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()

    def engine_fails_to_bind():
        proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        proc.wait(60)
        return check_listener(proc.pid, "127.0.0.1", port), proc.returncode

    out, (seen, code) = _as_nobody_on(port, 0, engine_fails_to_bind)  # dual-stack, bound first
    assert out == "held"
    assert code != 0
    assert not seen.ours
    assert [h.uid for h in seen.foreign] == [NOBODY]
