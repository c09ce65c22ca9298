"""Render chat templates with bounds on time and memory: the one place the workbench renders one.

A chat template is code from the model folder. transformers renders it in a
sandboxed Jinja environment that stops attribute tricks but sets no limits: nested
``{% for %}`` loops hung a prompt past 90 s, and ``{{ 'x' * 10**10 }}`` grew the
kernel to 16.9 GB. In-process Jinja cannot be interrupted, so every render goes
to one small long-lived worker process (:mod:`workbench._template_worker`),
started on first use, that runs transformers' own renderer (``render_jinja_template``,
the function ``apply_chat_template`` calls, through :mod:`workbench._transformers_compat`)
under ``RLIMIT_AS``:

* a render that runs past ``timeout_s`` (setting ``chat_template_timeout_s``) gets the
  worker killed (SIGKILL) and restarted on the next render;
* one that allocates past the budget (setting ``chat_template_memory_bytes``) fails
  with ``MemoryError`` in the worker, which then restarts;
* output longer than :data:`MAX_OUTPUT_CHARS` is refused;

and each raises :class:`~workbench.errors.ChatTemplateError` naming the template's file.
The kernel only waits (bounded) on a pipe. The common case stays fast: one round trip
of a few hundred microseconds per batch of prompts (``bench/bench_chat_template.py``).

Why a worker of our own: no library renders untrusted Jinja with bounds; the sandbox
itself is transformers' (``ImmutableSandboxedEnvironment`` and its filters), unchanged.

Example:
    >>> render_chat_template(tokenizer, [{"role": "user", "content": "Hi"}],
    ...                      source="/models/SmolLM2/chat_template.jinja")  # doctest: +SKIP
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import atexit
import os
import select
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _template_worker as wire
from ._child_python import SAFE_PATH_ENV, python_module_argv
from .errors import ChatTemplateError

#: Longest text a template may render (characters; a million-token context is ~4 M).
MAX_OUTPUT_CHARS = 32 << 20
#: Seconds the worker may take to start (import transformers' renderer) on a busy machine.
START_TIMEOUT_S = 120.0

Messages = Sequence[Mapping[str, Any]]


def _settings() -> tuple[float, int]:
    from .config import get_settings

    s = get_settings()
    return float(s.chat_template_timeout_s), int(s.chat_template_memory_bytes)


class _Worker:
    """The worker process and the pipe to it; one render at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.budget = 0
        self.limit_bytes = 0
        self.starts = 0

    def _start(self, budget: int) -> None:
        env = {**os.environ, **SAFE_PATH_ENV, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        # In "/" (no one's to write) and with -P: nothing from the caller's folder is imported.
        self.proc = subprocess.Popen(python_module_argv("workbench._template_worker", str(budget)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, close_fds=True, cwd="/")
        self.budget = budget
        self.starts += 1
        try:
            ready = self._receive(time.monotonic() + START_TIMEOUT_S)
        except TimeoutError:
            self.kill()
            raise ChatTemplateError(f"the chat-template worker did not start within {START_TIMEOUT_S:.0f} s",
                                    hint="the machine may be overloaded; retry", reason="crashed") from None
        if not isinstance(ready, dict) or not ready.get("ready"):
            self.kill()
            raise ChatTemplateError("the chat-template worker failed to start",
                                    hint="check that transformers and jinja2 import in this environment",
                                    reason="crashed")
        self.limit_bytes = int(ready.get("limit_bytes") or 0)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def _send(self, data: bytes, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            _r, w, _x = select.select([], [fd], [], left)
            if w:
                n = os.write(fd, view[:1 << 16])
                view = view[n:]

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _w, _x = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, min(n - got, 1 << 20))
                if not chunk:
                    return None
                chunks.append(chunk)
                got += len(chunk)
        return b"".join(chunks)

    def _receive(self, deadline: float) -> Any:
        head = self._read_exact(4, deadline)
        if head is None:
            return None
        (n,) = struct.unpack(">I", head)
        if n > wire.MAX_MESSAGE_BYTES:
            return None
        body = self._read_exact(n, deadline)
        import json

        return None if body is None else json.loads(body.decode("utf-8", "surrogatepass"))

    def call(self, request: dict[str, Any], *, timeout_s: float, budget: int, source: str) -> list[str]:
        data = wire.encode(request)
        if len(data) > wire.MAX_MESSAGE_BYTES:
            raise ChatTemplateError(f"the chat for the template in {source} is too large to render "
                                    f"({len(data)} bytes)", hint="send a shorter chat", template=source,
                                    reason="output")
        with self.lock:
            if self.proc is None or self.proc.poll() is not None or self.budget != budget:
                self.kill()
                self._start(budget)
            deadline = time.monotonic() + timeout_s
            try:
                self._send(data, deadline)
                reply = self._receive(deadline)
            except TimeoutError:
                self.kill()
                raise ChatTemplateError(
                    f"the chat template in {source} did not finish rendering within {timeout_s:g} s (it was "
                    "stopped; the kernel is unharmed)", hint="the template is code from the model folder: fix or "
                    "replace it, or raise chat_template_timeout_s if it is genuinely slow", template=source,
                    reason="time", timeout_s=timeout_s) from None
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:
                code = self.proc.poll() if self.proc is not None else None
                self.kill()
                memory = code is not None and code < 0  # killed by a signal (the kernel's OOM killer...)
                raise ChatTemplateError(
                    f"the chat template in {source} crashed the renderer"
                    + (f" (signal {-code})" if memory else ""),
                    hint="the template is code from the model folder: fix or replace it", template=source,
                    reason="crashed")
            if reply.get("error"):
                if reply["error"] == "memory":
                    self.kill()
                    raise ChatTemplateError(
                        f"the chat template in {source} needed more than {budget >> 20} MiB to render (it was "
                        "stopped; the kernel is unharmed)", hint="the template is code from the model folder: fix "
                        "or replace it, or raise chat_template_memory_bytes", template=source, reason="memory",
                        memory_bytes=budget)
                if reply["error"] == "output":
                    raise ChatTemplateError(f"the chat template in {source} produced a prompt longer than "
                                            f"{MAX_OUTPUT_CHARS} characters", hint="fix or replace the template",
                                            template=source, reason="output")
                raise ChatTemplateError(f"the chat template in {source} failed: {reply.get('type')}: "
                                        f"{reply.get('message')}",
                                        hint="check the chat's roles and contents against what the template "
                                             "expects, or fix the template", template=source, reason="error")
            return list(reply["ok"])


_worker = _Worker()
atexit.register(_worker.kill)


def render_chat_templates(template: str, conversations: Sequence[Messages], *, source: str,
                          add_generation_prompt: bool = True, continue_final_message: bool | str = False,
                          tools: Sequence[Mapping[str, Any]] | None = None,
                          documents: Sequence[Mapping[str, Any]] | None = None, timeout_s: float | None = None,
                          memory_bytes: int | None = None, **template_kwargs: Any) -> list[str]:
    """Render ``template`` for each chat in ``conversations``, bounded, as ``apply_chat_template(tokenize=False)``.

    Args:
        template: the Jinja text.
        conversations: chats, each a list of OpenAI-style message dicts; values must be
            JSON-like (other objects, such as images, reach the template as ``"<TypeName>"``).
        source: the template's file, named in errors (``"/models/x/chat_template.jinja"``).
        add_generation_prompt, continue_final_message, tools, documents: as transformers'.
        timeout_s: for the whole batch (default: the ``chat_template_timeout_s`` setting).
        memory_bytes: the worker's budget above its baseline (default ``chat_template_memory_bytes``).
        **template_kwargs: variables the template sees (special tokens, ``enable_thinking``...).

    Returns:
        One rendered text per chat.

    Raises:
        ChatTemplateError: the template raised, or passed a bound (``reason`` says which); the
            kernel and the worker's next render are unaffected.
    """
    default_timeout, default_memory = _settings()
    kwargs: dict[str, Any] = {"add_generation_prompt": bool(add_generation_prompt),
                              "continue_final_message": continue_final_message, **template_kwargs}
    if tools is not None:
        kwargs["tools"] = [dict(t) for t in tools]
    if documents is not None:
        kwargs["documents"] = [dict(d) for d in documents]
    request = {"template": template, "conversations": [[dict(m) for m in c] for c in conversations],
               "kwargs": kwargs, "max_output_chars": MAX_OUTPUT_CHARS}
    return _worker.call(request, timeout_s=timeout_s if timeout_s is not None else default_timeout,
                        budget=memory_bytes if memory_bytes is not None else default_memory, source=source)


def render_chat_template(tokenizer: Any, messages: Messages | Sequence[Messages], *, source: str,
                         add_generation_prompt: bool = True, continue_final_message: bool | str = False,
                         tools: Sequence[Mapping[str, Any]] | None = None,
                         documents: Sequence[Mapping[str, Any]] | None = None, timeout_s: float | None = None,
                         memory_bytes: int | None = None, **template_kwargs: Any) -> Any:
    """``tokenizer.apply_chat_template(messages, tokenize=False, ...)``, rendered within bounds.

    The template is the tokenizer's own (``get_chat_template``, so named templates and
    tools pick as transformers picks); its ``special_tokens_map`` is passed to the
    template as transformers passes it (``template_kwargs`` override it).

    Args:
        messages: one chat, or a list of chats (then a list of texts is returned).
        source: the template's file, named in errors.
        others: as :func:`render_chat_templates`.

    Raises:
        ChatTemplateError: as :func:`render_chat_templates`.
        ValueError: the tokenizer has no chat template (transformers' own error).
    """
    batched = bool(messages) and not isinstance(messages[0], Mapping)
    chats = list(messages) if batched else [messages]
    template = tokenizer.get_chat_template(None, tools)
    variables = {**tokenizer.special_tokens_map, **template_kwargs}
    texts = render_chat_templates(template, chats, source=source, add_generation_prompt=add_generation_prompt,
                                  continue_final_message=continue_final_message, tools=tools, documents=documents,
                                  timeout_s=timeout_s, memory_bytes=memory_bytes, **variables)
    return texts if batched else texts[0]


def prestart() -> None:
    """Start the worker in the background if it is not running (a load calls this, so the first
    prompt does not wait for the worker's imports); returns at once."""
    if _worker.proc is not None and _worker.proc.poll() is None:
        return

    def run() -> None:
        _timeout, budget = _settings()
        with _worker.lock:
            if _worker.proc is None or _worker.proc.poll() is not None:
                try:
                    _worker.kill()
                    _worker._start(budget)
                except ChatTemplateError:
                    _worker.kill()  # the first render reports it

    threading.Thread(target=run, name="workbench-template-worker-start", daemon=True).start()


def worker_pid() -> int | None:
    """The worker's PID while it runs (tests stop it and watch it come back)."""
    proc = _worker.proc
    return proc.pid if proc is not None and proc.poll() is None else None


def worker_starts() -> int:
    """How many times a worker was started in this process."""
    return _worker.starts


def shutdown() -> None:
    """Stop the worker (the next render starts a fresh one)."""
    with _worker.lock:
        _worker.kill()
