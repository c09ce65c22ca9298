"""The store's safety gate: which entries may be loaded, and with which opt-ins.

ARCHITECTURE.md section 4: pickle weights and remote code are refused unless the
caller opts in for exactly that risk; broken entries are refused outright. The
scan marks entries ``broken``/``unsafe``; this module turns that mark into the
typed error a load (local or through a serving engine) raises before touching a file.
"""

from __future__ import annotations

from ..errors import BrokenModelError, UnsafeModelError, UnsupportedModelError
from .coverage import check_coverage
from .entry import ModelEntry
from .folder_json import config_or_none
from .tokenizer_files import missing_tokenizer_text, require_tokenizer


def needs_remote_code(entry: ModelEntry) -> bool:
    """Whether the entry's ``config.json`` names its own Python classes (``auto_map``)."""
    config = config_or_none(entry.folder)
    return config is not None and bool(config.get("auto_map"))


def check_entry(entry: ModelEntry, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                coverage: bool = True) -> None:
    """Refuse broken entries, and unsafe ones unless the caller opts in for exactly that risk.

    Args:
        entry: a store entry.
        trust_remote_code: the caller accepts running the model folder's own Python code.
        allow_pickle: the caller accepts pickle weights (loaded with ``weights_only=True``).
        coverage: also check that the tensors cover the model (builds the skeleton, so imports torch);
            ``False`` only for a torch-free preflight whose load checks again (``workbench serve``'s).

    Raises:
        TokenizerMissingError: a safetensors/pickle folder without tokenizer files.
        BrokenModelError: the store found the files unreadable, or the checkpoint's tensors do not cover
            the model transformers builds for it (:mod:`workbench.store.coverage`).
        UnsupportedModelError: the runtime does not run this kind of model (``reason`` says why).
        UnsafeModelError: pickle weights without ``allow_pickle``, remote code without
            ``trust_remote_code``, or a risk no opt-in covers (a link out of the store).
    """
    no_tokenizer = entry.format != "gguf" and not entry.has_tokenizer and entry.path.is_dir()
    if entry.status == "broken":
        # The listing's own problem comes first: an empty folder or a lone GGUF part also lacks tokenizer
        # files, but saying so would send the user after the wrong fault.
        if no_tokenizer and entry.problem == missing_tokenizer_text(entry.path):
            require_tokenizer(entry.path, entry.name)
        raise BrokenModelError(f"{entry.name} cannot be loaded: {entry.problem}",
                               hint="fix or re-import the files (see `workbench store list`)",
                               name=entry.name, path=entry.path)
    if entry.status == "unsupported":
        raise UnsupportedModelError(f"{entry.name} cannot be loaded: {entry.problem}",
                                    hint="pick a causal-LM or vision-language model (`workbench store list` "
                                         "says which are ok)", name=entry.name, path=entry.path,
                                    reason=entry.problem)
    if no_tokenizer:
        require_tokenizer(entry.path, entry.name)
    if entry.status == "ok" and coverage:
        # The listing shows a coverage verdict only once one was computed; a load always asks.
        check_coverage(entry)
    if entry.status != "unsafe":
        return
    remote = needs_remote_code(entry)
    pickle = entry.format == "pickle"
    if remote and not trust_remote_code:
        raise UnsafeModelError(f"{entry.name} needs to run its own Python code ({entry.path / 'config.json'})",
                               hint="load it with trust_remote_code=True only if you trust its source",
                               name=entry.name, path=entry.path)
    if pickle and not allow_pickle:
        files = ", ".join(entry.weight_files[:3]) or "pickle files"
        raise UnsafeModelError(f"{entry.name} stores its weights as pickle ({files}), which can run code when loaded",
                               hint="convert it to safetensors, or pass allow_pickle=True if you trust its source "
                                    "(it then loads with weights_only=True)",
                               name=entry.name, path=entry.path)
    if not (remote or pickle):
        raise UnsafeModelError(f"{entry.name} cannot be loaded: {entry.problem}",
                               hint="no opt-in covers this; fix the store entry", name=entry.name, path=entry.path)
