"""Where a model folder keeps its tokenizer and its chat template, read as transformers reads them.

One place decides both, so what ``workbench store list`` reports and what the
runtime applies cannot disagree: the listing calls :func:`tokenizer_files` and
:func:`find_chat_template`; the loader refuses a folder without tokenizer files
(:func:`require_tokenizer`) and sets the loaded tokenizer's ``chat_template`` to
:attr:`ChatTemplate.template` of the same function.

The chat-template rule follows transformers 5 (``PreTrainedTokenizerBase.from_pretrained``
and ``ProcessorMixin.from_pretrained``), first match wins:

1. ``chat_template.jinja`` and ``additional_chat_templates/*.jinja``: the tokenizer
   reads these and they replace any template in ``tokenizer_config.json``
   (``chat_template.jinja`` is the template named ``default``).
2. ``tokenizer_config.json`` ``chat_template``: a string, or a list of
   ``{"name", "template"}`` (named templates).
3. ``chat_template.json`` ``chat_template``: the processor's legacy file, which
   ``AutoTokenizer`` never reads; the runtime applies it itself.

Of several named templates, the one used for a prompt is ``default`` (as
``apply_chat_template`` picks with no name and no tools); without a ``default``
transformers refuses to choose, so neither does the workbench: the entry reports
the names and prompts run without a template.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._bounded_read import load_json, read_bytes
from ..errors import BrokenModelError, MissingTokenizerError, UntrustedFileError
from .limits import MAX_EXTRA_TEMPLATES, TEMPLATE_MAX_BYTES, json_max_bytes

# Files from which transformers can build a tokenizer: the fast tokenizer, the
# sentencepiece models, the BPE/WordPiece vocabularies, Mistral's tekken.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
    "tekken.json",
)

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
TOKENIZER_CONFIG = "tokenizer_config.json"
PROCESSOR_CHAT_TEMPLATE_FILE = "chat_template.json"


def tokenizer_files(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """The tokenizer files (of :data:`TOKENIZER_FILES`) present in ``folder``."""
    folder = Path(folder)
    return tuple(n for n in TOKENIZER_FILES if (folder / n).is_file())


def missing_tokenizer_text(folder: str | os.PathLike[str]) -> str:
    """The sentence the listing and the loader use for a folder without tokenizer files."""
    return (f"no tokenizer in {folder} (looked for {', '.join(TOKENIZER_FILES)}): it cannot turn prompts "
            "into tokens; copy the tokenizer files of the model it was made from into the folder")


def require_tokenizer(folder: str | os.PathLike[str], name: str | None = None) -> tuple[str, ...]:
    """The tokenizer files of ``folder``.

    Raises:
        MissingTokenizerError: none of :data:`TOKENIZER_FILES` is there; names the folder and the files.
    """
    found = tokenizer_files(folder)
    if not found:
        # The sentence already says what to do; a hint would say it a second time.
        raise MissingTokenizerError(missing_tokenizer_text(folder), name=name, path=Path(folder), looked_for=list(TOKENIZER_FILES))
    return found


@dataclass(frozen=True)
class ChatTemplate:
    """The chat templates of a folder and where they came from.

    Attributes:
        source: the file (or folder) they were read from, relative to the model folder:
            ``"chat_template.jinja"``, ``"additional_chat_templates/"``,
            ``"tokenizer_config.json"`` or ``"chat_template.json"``.
        templates: name -> Jinja text; a single template is named ``"default"``.
    """

    source: str
    templates: dict[str, str] = field(default_factory=dict)

    @property
    def template(self) -> str | None:
        """The template a prompt is rendered with: ``default``, or ``None`` when there is none."""
        return self.templates.get("default")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.templates))


def _read_template(path: Path) -> str | None:
    """A template file's text; ``None`` when it is not there or not UTF-8 (transformers skips neither,
    but a folder whose tokenizer would fail is reported by the load, not by the listing).

    Raises:
        BrokenModelError: it is larger than :data:`~workbench.store.limits.TEMPLATE_MAX_BYTES`
            or no regular file: reading it would cost unbounded time or memory.
    """
    try:
        raw = read_bytes(path, TEMPLATE_MAX_BYTES)
    except UntrustedFileError as exc:
        raise _broken(path, exc) from None
    except OSError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _broken(path: Path, exc: UntrustedFileError) -> BrokenModelError:
    return BrokenModelError(f"{path.parent.name}/{path.name} {exc.reason}",
                            hint="remove or replace the file; a real one is far smaller", path=path)


def _from_value(value: object) -> dict[str, str]:
    # transformers accepts a string or a list of {"name", "template"} (tokenization_utils_base: __init__).
    if isinstance(value, str) and value:
        return {"default": value}
    if isinstance(value, (list, tuple)):
        return {t["name"]: t["template"] for t in value
                if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)}
    return {}


def _json_key(path: Path, key: str, docs: Mapping[str, Any] | None) -> object:
    if docs is not None and path.name in docs:
        data = docs[path.name]
    else:
        try:
            data = load_json(path, json_max_bytes(path.name))
        except (OSError, UntrustedFileError):
            return None
    return data.get(key) if isinstance(data, dict) else None


def find_chat_template(folder: str | os.PathLike[str], *, docs: Mapping[str, Any] | None = None) -> ChatTemplate | None:
    """The chat templates transformers would give this folder, by the module's rule; ``None`` if none.

    Every file is read within the bounds of :mod:`workbench.store.limits`.

    Args:
        docs: JSON files of the folder the caller already parsed, by file name (the listing
            checks ``tokenizer_config.json`` once and hands it over).

    Raises:
        BrokenModelError: a template file is too large to read, or is no regular file.

    Example:
        >>> found = find_chat_template("/models/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> found.source, found.template is not None  # doctest: +SKIP
        ('chat_template.jinja', True)
    """
    folder = Path(folder)
    templates: dict[str, str] = {}
    extra_dir = folder / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        names = sorted(itertools.islice((e.name for e in os.scandir(extra_dir) if e.name.endswith(".jinja")),
                                        MAX_EXTRA_TEMPLATES + 1))
        if len(names) > MAX_EXTRA_TEMPLATES:
            raise BrokenModelError(f"{CHAT_TEMPLATE_DIR}/ holds more than {MAX_EXTRA_TEMPLATES} templates, "
                                   "more than the workbench reads", hint="remove the ones you do not use",
                                   path=extra_dir)
        for name in names:
            text = _read_template(extra_dir / name)
            if text is not None:
                templates[name.removesuffix(".jinja")] = text
    main = _read_template(folder / CHAT_TEMPLATE_FILE)
    if main is not None:
        templates["default"] = main
    if templates:
        return ChatTemplate(CHAT_TEMPLATE_FILE if main is not None else f"{CHAT_TEMPLATE_DIR}/", templates)
    for source in (TOKENIZER_CONFIG, PROCESSOR_CHAT_TEMPLATE_FILE):
        found = _from_value(_json_key(folder / source, "chat_template", docs))
        if found:
            return ChatTemplate(source, found)
    return None
