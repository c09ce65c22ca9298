"""The engines' command lines: ``vllm serve``, ``transformers serve`` and llama.cpp's servers.

Only argument building and finding the executables lives here; no process is
started. Flags are the engines' own (``vllm serve --help``, ``transformers serve
--help``); the numbers vLLM gets come from :mod:`workbench.serve.vllm_memory`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

from .._child_python import python_module_argv
from ..errors import EngineNotFoundError, LoadSpecError
from ..precision import Quant, is_gpu

Engine = Literal["vllm", "transformers", "llamacpp"]
"""The engines the workbench starts."""
EngineChoice = Literal["auto", "vllm", "transformers", "llamacpp"]
"""What a caller may ask for: an engine, or ``"auto"`` (see :func:`pick_engine`)."""
ENGINES: tuple[EngineChoice, ...] = get_args(EngineChoice)
#: bitsandbytes quantization names -> ``transformers serve --quantization``.
TRANSFORMERS_QUANT: dict[Quant, str] = {"int8": "bnb-8bit", "nf4": "bnb-4bit"}
#: The quantizations an engine can be asked for (``--quant`` choices, the Serve tab's options).
SERVE_QUANTS: tuple[Quant, ...] = ("none", *TRANSFORMERS_QUANT)
HOST = "127.0.0.1"
#: The environment variable that gives an engine its API key: vLLM reads ``VLLM_API_KEY`` when
#: ``--api-key`` is not given (``vllm/entrypoints/openai/api_server.py``: ``args.api_key or
#: [envs.VLLM_API_KEY]``; ``AuthenticationMiddleware`` then guards ``/v1``); ``transformers serve``
#: has no authentication, so it runs under :mod:`workbench.serve.tf_launcher`, which reads this one.
#: llama.cpp: ``python -m llama_cpp.server`` reads its settings (pydantic-settings ``ServerSettings``)
#: from the environment, ``api_key`` as ``API_KEY``; a ``llama-server`` binary reads ``LLAMA_API_KEY``
#: (llama.cpp ``common/arg.cpp``: ``--api-key`` ``.set_env("LLAMA_API_KEY")``). Both get the key.
API_KEY_VARIABLES: dict[str, str] = {"vllm": "VLLM_API_KEY", "transformers": "WORKBENCH_ENGINE_API_KEY",
                                     "llamacpp": "API_KEY"}
_EXTRA_KEY_VARIABLES: dict[str, tuple[str, ...]] = {"llamacpp": ("LLAMA_API_KEY",)}


#: The sampling controls outside the OpenAI schema, and the request field each engine takes
#: them as (sent in the openai client's ``extra_body``). vLLM: ``vllm/entrypoints/openai/protocol.py``
#: ``ChatCompletionRequest`` ("extra sampling params": ``top_k``, ``min_p``, ``repetition_penalty``).
#: ``transformers serve`` refuses any field not in its ``TransformersCompletionCreateParamsStreaming``
#: with HTTP 422 (``transformers/cli/serving/utils.py`` ``BaseHandler._validate_request``), so it gets
#: none of those; both take ``chat_template_kwargs`` (vLLM's ``ChatCompletionRequest.chat_template_kwargs``,
#: transformers' params class), through which ``enable_thinking`` reaches the template (a dotted
#: field is nested: ``{"chat_template_kwargs": {"enable_thinking": False}}``). An engine kind not
#: listed here (``"remote"``: added by URL without ``--engine``) is of unknown kind and gets none either; the result
#: names each control not sent. Adding an engine kind is one entry here.
ENGINE_EXTENSIONS: dict[str, dict[str, str]] = {
    "vllm": {"top_k": "top_k", "repetition_penalty": "repetition_penalty", "min_p": "min_p",
             "enable_thinking": "chat_template_kwargs.enable_thinking"},
    "transformers": {"enable_thinking": "chat_template_kwargs.enable_thinking"},
    # llama_cpp.server's CreateChatCompletionRequest and llama-server both take these fields.
    "llamacpp": {"top_k": "top_k", "repetition_penalty": "repeat_penalty", "min_p": "min_p"},
}
#: OpenAI request fields an engine ignores with only a log line (transformers serve:
#: ``UNUSED_CHAT_COMPLETION_FIELDS``, "Ignoring unsupported fields"): left out of its requests.
ENGINE_IGNORED_FIELDS: dict[str, frozenset[str]] = {"transformers": frozenset({"stream_options"})}
#: Engines that sample every request with the settings of their first one. Read in transformers
#: 5.24's source: ``transformers serve --continuous-batching`` builds one continuous-batching manager
#: per served model, on that model's first request, from that request's generation config
#: (``cli/serving/utils.py`` ``CBGenerateManager.init_cb``, marked "TODO: remove when CB supports
#: per-request generation config"); later requests reach ``ContinuousBatchingManager.add_request``
#: with only ``max_new_tokens`` and ``eos_token_id``, although ``add_request`` takes per-request
#: ``logit_processor_kwargs`` (``generation/continuous_batching/continuous_api.py``). So a request's
#: ``temperature``, ``top_p`` (and the do_sample they imply), ``frequency_penalty``, ``logit_bias`` and
#: ``stop`` are not honoured; the first request's hold until the server stops or serves another model,
#: and this cuts both ways: a greedy request after a sampled first one is sampled too. Only ``seed``
#: acts per request (it seeds torch globally before the request is queued). Without the flag each
#: request is generated alone with its own settings.
SHARED_SAMPLING_FLAG: dict[str, str] = {"transformers": "--continuous-batching"}


def engine_neutral_fields(engine: str) -> dict[str, float | int]:
    """Fields sent with every request to an engine kind, unless a control sets them.

    Where the server's own defaults sample in ways the workbench's settings do not (a request the
    workbench calls greedy and unpenalised must be that on the engine too, as it is for a model run in
    the kernel). llama-cpp-python's server: ``repeat_penalty`` 1.1, ``min_p`` 0.05, ``top_k`` 40
    (``llama_cpp/server/types.py`` ``repeat_penalty_field``, ``min_p_field``, ``top_k_field``);
    ``llama-server``: ``min_p`` 0.05, ``top_k`` 40 (llama.cpp ``common/common.h``
    ``common_params_sampling``). The neutral values are :data:`workbench.runtime.llamacpp.NEUTRAL_SAMPLING`,
    the one table the kernel's ``Llama.generate`` starts from too.
    """
    if engine == "llamacpp":
        # Imported here, not at the top: the ui imports this module, and must not import the runtime with it.
        from ..runtime.llamacpp import NEUTRAL_SAMPLING

        return dict(NEUTRAL_SAMPLING)
    return {}


#: What ``workbench endpoints add --engine`` takes: a kind whose requests the workbench knows, or unknown.
ENGINE_KINDS: tuple[str, ...] = ("unknown", *ENGINE_EXTENSIONS)


def engine_extensions(engine: str) -> dict[str, str]:
    """``{control: request field}`` of the non-OpenAI sampling controls ``engine`` takes (empty when unknown)."""
    return ENGINE_EXTENSIONS.get(engine, {})


def api_key_variable(engine: str) -> str:
    """The environment variable through which ``engine`` gets its key (see :data:`API_KEY_VARIABLES`)."""
    return API_KEY_VARIABLES[engine]


def api_key_variables(engine: str) -> tuple[str, ...]:
    """Every environment variable ``engine`` may read its key from (the first is :func:`api_key_variable`)."""
    return (API_KEY_VARIABLES[engine], *_EXTRA_KEY_VARIABLES.get(engine, ()))


def llamacpp_command(setting: str | None = None) -> tuple[list[str], bool]:
    """``(argv, is_llama_server)``: the ``llamacpp_command`` setting's ``llama-server`` when set and found,
    else ``[python, "-m", "llama_cpp.server"]`` (llama-cpp-python's server, its ``server`` extra).

    Raises:
        EngineNotFoundError: the setting names a program that is not found, or llama-cpp-python's
            server (or its extra) is not installed.
    """
    import importlib.util

    if setting is None:
        from ..config import get_settings

        setting = getattr(get_settings(), "llamacpp_command", "") or ""
    argv = shlex.split(setting)
    if argv:
        exe = argv[0]
        found = exe if os.sep in exe and os.access(exe, os.X_OK) else shutil.which(exe)
        if not found:
            raise EngineNotFoundError(f"llamacpp_command {setting!r}: {exe} is not found",
                                      hint="set llamacpp_command to a llama-server binary, or leave it empty to use "
                                           "llama-cpp-python's server")
        return [found, *argv[1:]], True
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineNotFoundError("llama-cpp-python is not installed", hint="run `make setup` (it builds it)")
    for module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            raise EngineNotFoundError(f"llama-cpp-python's server needs {module}, which is not installed",
                                      hint="pip install 'llama-cpp-python[server]'")
    return python_module_argv("llama_cpp.server"), False


def inherited_settings(engine: str, argv: Sequence[str]) -> frozenset[str]:
    """Names (lower-cased) of this process's environment variables the engine must not inherit.

    ``python -m llama_cpp.server`` reads every field of its settings from the environment by the
    field's bare name, case-insensitively, wherever no flag sets it (pydantic-settings ``Settings``
    with ``env_prefix=""``, ``case_sensitive=False``; ``CONFIG_FILE`` replaces the command line with
    a file's models): a ``MODEL``, ``HF_MODEL_REPO_ID``, ``LORA_PATH``, ``CHAT_FORMAT`` or ``CACHE``
    set in the user's shell for something else would change what it serves. The names come from
    llama-cpp-python's own settings classes. Other engines read only their own prefixed variables
    (``VLLM_*``, ``LLAMA_ARG_*``), which a user sets on purpose: nothing is dropped for them.
    """
    if engine != "llamacpp" or "llama_cpp.server" not in argv:
        return frozenset()
    from llama_cpp.server.settings import ConfigFileSettings, Settings

    names = {"config_file"}
    for cls in (Settings, ConfigFileSettings):
        for field_name, field in cls.model_fields.items():
            names.add(field_name)
            names.update(a for a in (field.alias, field.validation_alias) if isinstance(a, str))
    return frozenset(n.lower() for n in names)


def has_health(engine: str, argv: Sequence[str]) -> bool:
    """Whether the engine answers ``GET /health``: all but llama-cpp-python's server (``llama-server`` does)."""
    return not (engine == "llamacpp" and "llama_cpp.server" in argv)


def llamacpp_argv(command: Sequence[str], model_path: str | os.PathLike[str], served_name: str, *, port: int,
                  n_ctx: int, n_threads: int, placement: dict[str, object], parallel: int = 1,
                  llama_server: bool = False, host: str = HOST) -> list[str]:
    """The command line of llama.cpp's OpenAI-compatible server for one GGUF.

    ``llama-server`` (llama.cpp's ``tools/server``): ``-m``, ``--alias``, ``-c`` (the context of all
    slots together), ``--parallel`` slots for concurrent clients, ``-ngl``, ``--main-gpu``,
    ``--tensor-split``. ``python -m llama_cpp.server`` (llama-cpp-python): ``--model``,
    ``--model_alias``, ``--n_ctx``, ``--n_gpu_layers``...; it answers one request at a time (one
    ``Llama`` behind a lock), so ``parallel`` applies to ``llama-server`` only.
    """
    layers = int(placement.get("n_gpu_layers", 0))  # type: ignore[call-overload]
    split = placement.get("tensor_split")
    main = placement.get("main_gpu")
    if llama_server:
        argv = [*command, "-m", str(model_path), "--alias", served_name, "--host", host, "--port", str(port),
                "-c", str(n_ctx * max(1, parallel)), "--parallel", str(max(1, parallel)), "-t", str(n_threads),
                "-ngl", str(999 if layers < 0 else layers)]
        if main is not None:
            argv += ["--main-gpu", str(main)]
        if split:
            argv += ["--tensor-split", ",".join(f"{x:g}" for x in split)]  # type: ignore[union-attr]
        return argv
    argv = [*command, "--model", str(model_path), "--model_alias", served_name, "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(n_threads), "--n_gpu_layers", str(layers)]
    if main is not None:
        argv += ["--main_gpu", str(main)]
    if split:
        argv += ["--tensor_split", *(f"{x:g}" for x in split)]  # type: ignore[union-attr]
    return argv


def transformers_command() -> list[str]:
    """``[python, "-m", "workbench.serve.tf_launcher"]``: ``transformers serve``, behind the engine's API key.

    The launcher runs transformers' own CLI (its ``serve`` command, its app, its engine) in
    this Python, with one middleware added that refuses requests without the engine's key.

    Raises:
        EngineNotFoundError: transformers' CLI or its serving extra is missing.
    """
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise EngineNotFoundError("transformers is not installed",
                                  hint="install transformers[serving] in the workbench's environment")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise EngineNotFoundError("`transformers serve` needs FastAPI and Uvicorn, which are not installed",
                                  hint="pip install 'transformers[serving]'") from None
    return python_module_argv("workbench.serve.tf_launcher")


def vllm_command(setting: str | None = None) -> list[str] | None:
    """The ``vllm_command`` setting split like a shell would, if its program is found; else ``None``."""
    if setting is None:
        from ..config import get_settings

        setting = get_settings().vllm_command
    argv = shlex.split(setting or "")
    if not argv:
        return None
    exe = argv[0]
    found = exe if os.sep in exe and os.access(exe, os.X_OK) else shutil.which(exe)
    return [found, *argv[1:]] if found else None


def pick_engine(engine: EngineChoice | str, devices: Sequence[str], vllm: list[str] | None, *,
                gguf: bool = False) -> Engine:
    """``auto`` -> ``"llamacpp"`` for a GGUF entry at its own quantization (``gguf``); else ``"vllm"``
    when every device is a GPU and vLLM is found, else ``"transformers"``.

    Raises:
        LoadSpecError: an unknown engine, or vLLM asked for the CPU.
        EngineNotFoundError: vLLM asked for and its command not found.
    """
    gpus = bool(devices) and all(is_gpu(d) for d in devices)
    if engine not in ENGINES:
        raise LoadSpecError(f"engine {engine!r} is not known", hint=f"use one of {', '.join(ENGINES)}")
    if engine == "auto":
        if gguf:
            return "llamacpp"
        return "vllm" if gpus and vllm else "transformers"
    if engine == "vllm":
        if not gpus:
            raise LoadSpecError("the workbench serves with vLLM on GPUs only",
                                hint="choose --device cuda:N, or --engine transformers for the CPU")
        if not vllm:
            raise EngineNotFoundError("vLLM's command was not found",
                                      hint="install vLLM in its own environment and set vllm_command (or "
                                           "WORKBENCH_VLLM_COMMAND) to its `vllm`; or use --engine transformers")
    return cast(Engine, engine)


@dataclass(frozen=True)
class VllmArgs:
    """What ``vllm serve`` is told (see :func:`vllm_argv`).

    Attributes:
        tensor_parallel_size: GPUs the model is split across on each node.
        pipeline_parallel_size: nodes (pipeline stages), 1 on one machine.
        gpu_memory_utilization: fraction of each GPU's total memory vLLM may take
            (weights, activations and KV cache), derived from the estimate and free memory.
        max_model_len: context length whose KV cache fits.
        distributed_executor_backend: ``"ray"`` for multi-node, else ``None`` (vLLM's default).
    """

    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    quantization: str | None = None
    dtype: str = "auto"
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None


def vllm_argv(command: Sequence[str], model_path: str | os.PathLike[str], served_name: str, args: VllmArgs, *,
              port: int, host: str = HOST) -> list[str]:
    """``vllm serve PATH --served-model-name NAME --tensor-parallel-size N ...``."""
    argv = [*command, "serve", str(model_path), "--served-model-name", served_name,
            "--host", host, "--port", str(port),
            "--tensor-parallel-size", str(args.tensor_parallel_size),
            "--gpu-memory-utilization", f"{args.gpu_memory_utilization:.2f}",
            "--max-model-len", str(args.max_model_len),
            "--dtype", args.dtype]
    if args.quantization:
        argv += ["--quantization", args.quantization]
    if args.pipeline_parallel_size > 1:
        argv += ["--pipeline-parallel-size", str(args.pipeline_parallel_size)]
    if args.distributed_executor_backend:
        argv += ["--distributed-executor-backend", args.distributed_executor_backend]
    return argv


#: ``transformers serve``'s continuous-batching page (``ContinuousBatchingConfig.page_size``'s default):
#: ``--cb-num-blocks`` counts cache blocks of this many tokens.
CB_PAGE_TOKENS = 256
#: Tokens one continuous-batching step may process (``--cb-max-batch-tokens``; transformers' own
#: default, 8192, sizes attention masks for a GPU: on a CPU it costs memory and buys nothing).
CB_MAX_BATCH_TOKENS = 256


def transformers_argv(command: Sequence[str], model_path: str | os.PathLike[str], *, port: int, device: str,
                      dtype: str = "auto", quant: str = "none", continuous_batching: bool = True,
                      host: str = HOST, cache_tokens: int | None = None) -> list[str]:
    """``transformers serve PATH --host 127.0.0.1 --port N --device D ...`` (the model preloaded).

    With continuous batching, ``cache_tokens`` (what the fit check counted for the KV cache) sets
    the engine's paged cache: ``--cb-num-blocks`` of :data:`CB_PAGE_TOKENS` tokens. Without it
    transformers sizes the cache from the device's free memory (``max_memory_percent``: 60-90%
    of it, ``transformers/generation/continuous_batching/initialization.py``
    ``resolve_max_memory_percent``), which on a CPU is the machine's RAM: a 135M model's engine
    took 13 GiB of a shared 23 GiB machine.

    Raises:
        LoadSpecError: a quantization ``transformers serve`` cannot apply (fp4).
    """
    argv = [*command, "serve", str(model_path), "--host", host, "--port", str(port), "--device", device,
            "--dtype", dtype]
    if quant != "none":
        if quant not in TRANSFORMERS_QUANT:
            raise LoadSpecError(f"`transformers serve` cannot quantize to {quant!r}",
                                hint="use --quant int8 or nf4", quant=quant)
        argv += ["--quantization", TRANSFORMERS_QUANT[quant]]
    if continuous_batching:
        argv.append("--continuous-batching")
        if cache_tokens:
            argv += ["--cb-num-blocks", str(-(-int(cache_tokens) // CB_PAGE_TOKENS)),
                     "--cb-max-batch-tokens", str(min(CB_MAX_BATCH_TOKENS, int(cache_tokens)))]
    return argv
