"""The chat-template worker: a small long-lived child process that renders templates under rlimits.

Run as ``python -m workbench._template_worker BUDGET_BYTES`` by
:mod:`workbench.chat_template`, never by hand. It imports transformers'
chat-template renderer once, then caps its own address space at what it holds plus
``BUDGET_BYTES`` (``RLIMIT_AS``) and serves requests on stdin/stdout: each message
is a 4-byte big-endian length and that many bytes of UTF-8 JSON. A template that
allocates past the cap gets ``MemoryError`` here, not in the kernel; one that loops
is killed by the parent's timeout.

Request: ``{"template": str, "conversations": [[message, ...], ...], "kwargs": {...},
"max_output_chars": int}``. Reply: ``{"ok": [text, ...]}`` or ``{"error": reason,
"type": exception class name, "message": str}``. The first message sent is
``{"ready": true, "limit_bytes": int}``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, BinaryIO

#: Largest request or reply accepted (bytes of JSON).
MAX_MESSAGE_BYTES = 256 << 20


def encode(doc: Any) -> bytes:
    body = json.dumps(doc, ensure_ascii=False, default=_placeholder).encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(body)) + body


def _placeholder(value: Any) -> str:
    # Images and other objects in message parts: the template sees their type, not their bytes.
    return f"<{type(value).__name__}>"


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_message(stream: BinaryIO) -> Any:
    head = _read_exact(stream, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_MESSAGE_BYTES:
        raise ValueError(f"request of {n} bytes")
    body = _read_exact(stream, n)
    return None if body is None else json.loads(body.decode("utf-8", "surrogatepass"))


def _vm_size_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _render(request: dict[str, Any]) -> dict[str, Any]:
    from ._transformers_compat import render_jinja_template

    try:
        texts = render_jinja_template(request["conversations"], chat_template=request["template"],
                                      **request.get("kwargs", {}))
    except MemoryError:
        return {"error": "memory", "type": "MemoryError", "message": "the template used more memory than allowed"}
    except RecursionError:
        return {"error": "error", "type": "RecursionError", "message": "the template recursed too deeply"}
    except Exception as exc:  # the template's own error (jinja2.TemplateError, raise_exception...), reported
        return {"error": "error", "type": type(exc).__name__, "message": str(exc)[:2000]}
    limit = int(request.get("max_output_chars", 1 << 25))
    if any(len(t) > limit for t in texts):
        return {"error": "output", "type": "ValueError",
                "message": f"the template produced more than {limit} characters"}
    return {"ok": texts}


def main(argv: list[str]) -> int:
    budget = int(argv[0]) if argv else 1 << 30
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Everything the renders need is imported (and a first template compiled) before the cap.
    from ._transformers_compat import render_jinja_template

    render_jinja_template([[{"role": "user", "content": "warm-up"}]],
                          chat_template="{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}")
    limit = 0
    try:
        import resource

        limit = _vm_size_bytes() + budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        limit = 0
    stdout.write(encode({"ready": True, "limit_bytes": limit}))
    stdout.flush()
    while True:
        try:
            request = _read_message(stdin)
        except (ValueError, MemoryError) as exc:
            stdout.write(encode({"error": "error", "type": type(exc).__name__, "message": str(exc)}))
            stdout.flush()
            return 2
        if request is None:
            return 0  # the parent closed our stdin: it is done, or gone
        reply = _render(request)
        try:
            data = encode(reply)
        except MemoryError:
            data = encode({"error": "memory", "type": "MemoryError",
                           "message": "the rendered text was too large to send back"})
        stdout.write(data)
        stdout.flush()
        if reply.get("error") == "memory":
            return 3  # start afresh: a MemoryError may leave the heap fragmented


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
