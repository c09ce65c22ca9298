"""Typed, actionable errors.

Every error the workbench raises on purpose is a :class:`WorkbenchError`. Each one
also subclasses the matching built-in (``FileNotFoundError``, ``MemoryError``...)
so callers that already catch those keep working, carries the context that
explains it as attributes (``path``, ``device``, ``needed_bytes``...), and ends
its message with what to do next (``hint``).

The classes are grouped by the layer that failed, so a name says what went wrong
and ``except`` can catch a whole layer:

* :class:`ConfigError`: a setting or argument the workbench cannot use;
* :class:`StoreError`: the model store or one of its entries;
* :class:`DeviceError`: a device name, or a GPU lease (:class:`LeaseError`);
* :class:`RuntimeErrorBase`: loading (:class:`LoadSpecError`, :class:`LoadError`,
  :class:`InsufficientMemoryError`...) and generation (:class:`GenerationError`);
* :class:`ServeError`: a serving engine or an OpenAI-compatible endpoint.

The UI shows ``str(error)`` in a banner; the CLI prints it on one line and exits
non-zero; the server extension answers with :meth:`WorkbenchError.to_dict`. Keep
messages one sentence of fact plus one of advice.
"""

from __future__ import annotations

from typing import Any

from ._records import jsonable


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose.

    Args:
        message: what went wrong, naming the file, model or device at fault.
        hint: what the user can do about it; appended to the message.
        **context: attributes that describe the failure (``path=...``).
    """

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}" if not self.message.endswith(".") else f"{self.message} {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description, used by ``--json`` output and the server extension's error replies."""
        ctx = {k: jsonable(v) for k, v in self.context.items()}
        return {"error": type(self).__name__, "message": str(self), **ctx}


# --- configuration ---------------------------------------------------------------------------


class ConfigError(WorkbenchError, ValueError):
    """A setting or argument has a value the workbench cannot use."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of the wrong type (a subscriber that is not callable, an unknown setting keyword)."""


class UntrustedFileError(WorkbenchError, ValueError):
    """A file refused by a bound on reading it (not a regular file, too large, JSON nested too deep).

    ``path`` names the file and ``reason`` says which bound; callers fold it into their own
    error (a broken store entry, a skipped lease file) with the file's name.
    """


class UnknownChoiceError(ConfigError, KeyError):
    """A name that is not one of the choices offered (a tab title); ``choices`` lists them."""

    # KeyError quotes its message; keep the WorkbenchError formatting.
    __str__ = WorkbenchError.__str__


# --- the model store --------------------------------------------------------------------------


class StoreError(WorkbenchError):
    """Something about the model store or one of its entries."""


class ModelNotFoundError(StoreError, FileNotFoundError):
    """No entry of that name in any store root."""


class UnsafeNameError(StoreError, PermissionError):
    """A model name that would resolve outside its store root (``..``, absolute, symlinks)."""


class ReadOnlyStoreError(StoreError, PermissionError):
    """A write was asked of a shared, read-only store root."""


class BrokenModelError(StoreError, ValueError):
    """An entry's files cannot be read: bad header, truncated file, missing shard..."""


class MissingTokenizerError(BrokenModelError):
    """A model folder has weights and a config but no tokenizer files, so it cannot run prompts."""


class EstimateUnavailableError(StoreError):
    """The model's memory cannot be estimated within the workbench's bounds (a skeleton too large to
    build, a config declaring a million layers); ``reason`` says which bound."""


class UnsafeModelError(StoreError, PermissionError):
    """An entry needs pickle or remote code, and the caller did not opt in."""


class UnsupportedModelError(StoreError, ValueError):
    """An entry the runtime does not run (an encoder-decoder or encoder-only model); ``reason`` says
    why, from transformers' auto classes (workbench/store/support.py)."""


class StoreRootError(StoreError, NotADirectoryError):
    """A configured store root that is no usable folder: a file, or a user store that cannot be read."""


class ModelImportError(StoreError, RuntimeError):
    """Importing or seeding a model into the user store failed; nothing was left behind."""


# --- devices ---------------------------------------------------------------------------------


class DeviceError(WorkbenchError):
    """Something about a device: unknown, unavailable, or a failing driver."""


class DeviceNotFoundError(DeviceError, LookupError):
    """A device name (``cuda:3``) that this session cannot use."""


class LeaseError(DeviceError, OSError):
    """A GPU lease cannot be read, taken or changed (the lease directory or file at fault is named)."""


class LeaseNotOwnedError(LeaseError, PermissionError):
    """A release of another user's GPU lease without ``force``, or with it by someone who is not an
    administrator (root, or a member of the setting ``lease_admin_group``)."""


class LeaseFolderError(LeaseError, PermissionError):
    """The shared lease folder cannot be trusted or used (a link, another user's, writable by others
    without the sticky bit, not writable); ``path`` and ``owner`` name it and whom it belongs to."""


# --- runtime ---------------------------------------------------------------------------------


class RuntimeErrorBase(WorkbenchError, RuntimeError):
    """Base of loading and generation errors (named to avoid shadowing ``RuntimeError``)."""


class LoadSpecError(RuntimeErrorBase, ValueError):
    """A load request that cannot be satisfied as written (bad dtype, device, quant...)."""


class InsufficientMemoryError(RuntimeErrorBase, MemoryError):
    """The model does not fit in the memory of the chosen devices."""


class UnknownNeedError(RuntimeErrorBase, ValueError):
    """The fit of a load cannot be checked because part of what it needs is unknown (the KV cache of a
    model transformers cannot build); ``unknown_parts`` names each part with its reason. The load may
    still run when the user opts out (``LoadSpec(allow_unknown_cache=True)``, ``--allow-unknown-cache``)."""


class LoadError(RuntimeErrorBase):
    """Loading failed; the workbench rolled back and holds nothing of the attempt."""


class LoadCancelledError(LoadError):
    """The user interrupted a load; it was rolled back."""


class QuantizationUnsupportedError(RuntimeErrorBase):
    """The chosen quantization is not available on this device or backend."""


class ModelNotLoadedError(RuntimeErrorBase, KeyError):
    """No loaded model of that name in this kernel's registry."""

    # KeyError quotes its message; keep the WorkbenchError formatting.
    __str__ = WorkbenchError.__str__


class GenerationError(RuntimeErrorBase):
    """Generation failed; the model stays loaded and usable."""


class GenerationOutOfMemoryError(GenerationError, MemoryError):
    """Generation ran out of memory; the model stays loaded and usable."""


class ChatTemplateError(GenerationError):
    """A model's chat template could not render this chat: it raised, or it went past the bounds on
    time, memory or output (``reason``: ``"error"``, ``"time"``, ``"memory"``, ``"output"``,
    ``"crashed"``); ``template`` names the file it came from. The kernel is unharmed."""


# --- serving engines and endpoints -------------------------------------------------------------


class ServeError(WorkbenchError):
    """Something about a serving engine or an OpenAI-compatible endpoint (``endpoint=`` names it)."""


class EngineNotFoundError(ServeError, FileNotFoundError):
    """The engine's command (``vllm``, ``transformers serve``) is not installed or not on the path."""


class EngineStartError(ServeError, RuntimeError):
    """An engine exited or never became ready; ``log_tail`` holds the end of its log. Nothing is left running."""


class ListenerNotOursError(ServeError, PermissionError):
    """The address an engine the workbench started should answer on is held by another process (another
    user's, on a shared machine); nothing was sent there. ``holders`` names who holds it."""


class EndpointNotFoundError(ServeError, LookupError):
    """No endpoint of that name in the endpoint registry."""

    __str__ = WorkbenchError.__str__


class EndpointUnreachableError(ServeError, ConnectionError):
    """The endpoint's URL does not answer (nothing listening, DNS, timeout)."""


class EndpointAuthError(ServeError, PermissionError):
    """The endpoint refused the API key (HTTP 401/403)."""


class EndpointModelNotFoundError(ServeError, LookupError):
    """The endpoint does not serve the model asked for (HTTP 404)."""

    __str__ = WorkbenchError.__str__


class EndpointRateLimitError(ServeError, RuntimeError):
    """The endpoint is overloaded or over quota (HTTP 429)."""


class EndpointStreamError(ServeError, ConnectionError):
    """A streamed answer stopped mid-way; ``partial_text`` holds what arrived."""


class EndpointResponseError(ServeError, RuntimeError):
    """The endpoint answered with another error status (``status_code``)."""


__all__ = [name for name, obj in globals().items() if isinstance(obj, type) and issubclass(obj, Exception)]
