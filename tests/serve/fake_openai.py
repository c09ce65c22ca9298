"""A minimal OpenAI-compatible server for tests, on 127.0.0.1 only (stdlib ``http.server``).

In a thread (:func:`serve_in_thread`) it answers the client-error tests; run as a
script it stands in for an engine (``vllm serve ...``): it writes its argv to
``$FAKE_ENGINE_RECORD``, refuses the flags vLLM refuses for the model's config.json
(:func:`vllm_refusal`, exit 1 with vLLM's message), and serves on the ``--port`` it was given.

Behaviour by requested model name:
    ``"missing"``: 404; ``"busy"``: 429; ``"cut"``: two chunks then the connection
    drops mid-body; ``"boom"``: 500; ``"slow"``: 0.2 s between chunks; ``"thinker"``/``"thinker-new"``: :data:`REASONING`
    first, in ``reasoning_content``/``reasoning`` deltas; anything else streams "The capital of France is
    Paris." word by word, then a usage chunk. With ``key`` set, requests without
    ``Authorization: Bearer <key>`` get 401. Every request body is appended to the
    returned log (in a thread) or to ``$FAKE_ENGINE_REQUESTS``, one JSON a line (as an engine).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY_VARIABLES = ("VLLM_API_KEY", "WORKBENCH_ENGINE_API_KEY", "LLAMA_API_KEY")
ANSWER = ["The", " capital", " of", " France", " is", " Paris", "."]
#: What ``"thinker"`` (vLLM's ``reasoning_content``) and ``"thinker-new"`` (newer vLLM's and
#: Ollama's ``reasoning``) stream before the answer.
REASONING = ["The", " user", " asks", " about", " France", ".", " Its", " capital", " is", " Paris", "."]
METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="fake"} 1.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="fake"} %d
"""


def make_handler(model: str, key: str | None, log: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    scrapes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # a client that stopped reading

        def _json(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                return True
            self._json(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
            return False

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/metrics":
                scrapes.append(1)  # the token counter grows 10 per scrape
                body = (METRICS % (10 * len(scrapes))).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/v1/models":
                if self._authorized():
                    self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._json(404, {"detail": "not found"})

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            log.append(req)
            requests_file = os.environ.get("FAKE_ENGINE_REQUESTS")
            if requests_file:  # as an engine subprocess: the request bodies, one JSON a line
                with open(requests_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(req) + "\n")
            if not self._authorized():
                return
            name = req.get("model")
            if name == "missing":
                return self._json(404, {"error": {"message": f"The model `{name}` does not exist."}})
            if name == "busy":
                return self._json(429, {"error": {"message": "Too many requests"}})
            if name == "boom":
                return self._json(500, {"error": {"message": "internal"}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = ANSWER[: req.get("max_tokens") or len(ANSWER)]
            thoughts = REASONING if name in ("thinker", "thinker-new") else []
            field = "reasoning" if name == "thinker-new" else "reasoning_content"
            for t in thoughts:
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": name,
                         "choices": [{"index": 0, "delta": {field: t}, "finish_reason": None}]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            for i, w in enumerate(words):
                if name == "cut" and i == 2:
                    # Drop the connection without the terminating chunk.
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                if name == "slow" and i:
                    time.sleep(0.2)  # a slow engine: a client can stop reading mid-answer
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": name,
                         "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            done = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": name,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._chunk(f"data: {json.dumps(done)}\n\n".encode())
            if (req.get("stream_options") or {}).get("include_usage"):
                n = len(words) + len(thoughts)
                usage = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": name, "choices": [],
                         "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}}
                self._chunk(f"data: {json.dumps(usage)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

    return Handler


def serve_in_thread(model: str = "fake-model", key: str | None = None
                    ) -> tuple[ThreadingHTTPServer, list[dict[str, Any]]]:
    """Start the fake on a free loopback port; returns ``(server, request log)``; call ``server.shutdown()``."""
    log: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(model, key, log))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, log


#: ``vllm/model_executor/layers/quantization/__init__.py`` ``QuantizationMethods`` (a few).
QUANTIZATION_METHODS = ("awq", "fp8", "gguf", "gptq", "gptq_marlin", "awq_marlin", "compressed-tensors", "bitsandbytes")


def vllm_refusal(argv: list[str]) -> str | None:
    """What vLLM says when it refuses these flags for the model's config.json (None: it starts).

    The rules and messages of vLLM's own checks: ``ModelConfig.verify_with_parallel_config``
    (heads divisible by TP), ``get_pp_indices`` (a layer per stage), ``CacheConfig``'s
    ``gpu_memory_utilization`` in (0, 1], ``_get_and_verify_max_len``, ``_verify_quantization``.
    """
    def flag(name: str, default: str | None = None) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else default

    cfg = json.loads((__import__("pathlib").Path(argv[1]) / "config.json").read_text())
    heads, layers = cfg.get("num_attention_heads", 0), cfg.get("num_hidden_layers", 0)
    tp, pp = int(flag("--tensor-parallel-size", "1")), int(flag("--pipeline-parallel-size", "1"))
    if heads % tp:
        return f"ValueError: Total number of attention heads ({heads}) must be divisible by tensor parallel size ({tp})."
    if pp > layers:
        return f"ValueError: pipeline parallel size {pp} leaves stages without layers ({layers} layers)"
    util = float(flag("--gpu-memory-utilization", "0.9"))
    if not 0 < util <= 1:
        return f"pydantic ValidationError: gpu_memory_utilization Input should be less than or equal to 1 [{util}]"
    length, derived = flag("--max-model-len"), cfg.get("max_position_embeddings")
    if length is not None and derived and int(length) > derived:
        return (f"ValueError: User-specified max_model_len ({length}) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived} or model_max_length=None in model's config.json).")
    quant = flag("--quantization")
    if quant is not None and quant not in QUANTIZATION_METHODS:
        return f"ValueError: Unknown quantization method: {quant}. Must be one of {list(QUANTIZATION_METHODS)}."
    return None


def main(argv: list[str]) -> None:
    record = os.environ.get("FAKE_ENGINE_RECORD")
    if record:
        with open(record, "w", encoding="utf-8") as fh:
            json.dump({"argv": argv, "env": {k: v for k, v in os.environ.items()
                                             if k.startswith(("CUDA_", "HF_"))},
                       "key_variables": sorted(k for k in KEY_VARIABLES if os.environ.get(k))}, fh)
    if os.environ.get("FAKE_ENGINE_CRASH"):
        print("RuntimeError: CUDA out of memory while loading the fake weights", file=sys.stderr)
        sys.exit(3)
    refusal = vllm_refusal(argv) if argv[:1] == ["serve"] and "--tensor-parallel-size" in argv else None
    if refusal:  # as vLLM: its config checks, then exit 1
        print(refusal, file=sys.stderr, flush=True)
        sys.exit(1)
    if os.environ.get("FAKE_ENGINE_HANG"):
        threading.Event().wait(600)
    port = int(argv[argv.index("--port") + 1])
    model = next((argv[argv.index(flag) + 1] for flag in ("--served-model-name", "--alias") if flag in argv),
                 "fake-model")
    # As the real engines: vLLM reads VLLM_API_KEY, the workbench's transformers launcher its own variable.
    key = next((os.environ[k] for k in KEY_VARIABLES if os.environ.get(k)), None)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(model, key, []))
    print(f"fake engine serving {model} on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
