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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingTokenizerError

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


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _from_value(value: object) -> dict[str, str]:
    # transformers accepts a string or a list of {"name", "template"} (tokenization_utils_base: __init__).
    if isinstance(value, str) and value:
        return {"default": value}
    if isinstance(value, (list, tuple)):
        return {t["name"]: t["template"] for t in value
                if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)}
    return {}


def _json_key(path: Path, key: str) -> object:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def find_chat_template(folder: str | os.PathLike[str]) -> ChatTemplate | None:
    """The chat templates transformers would give this folder, by the module's rule; ``None`` if none.

    Example:
        >>> found = find_chat_template("/models/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> found.source, found.template is not None  # doctest: +SKIP
        ('chat_template.jinja', True)
    """
    folder = Path(folder)
    templates: dict[str, str] = {}
    extra_dir = folder / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for f in sorted(extra_dir.glob("*.jinja")):
            text = _read_text(f)
            if text is not None:
                templates[f.name.removesuffix(".jinja")] = text
    main = _read_text(folder / CHAT_TEMPLATE_FILE) if (folder / CHAT_TEMPLATE_FILE).is_file() else None
    if main is not None:
        templates["default"] = main
    if templates:
        return ChatTemplate(CHAT_TEMPLATE_FILE if main is not None else f"{CHAT_TEMPLATE_DIR}/", templates)
    for source in (TOKENIZER_CONFIG, PROCESSOR_CHAT_TEMPLATE_FILE):
        found = _from_value(_json_key(folder / source, "chat_template"))
        if found:
            return ChatTemplate(source, found)
    return None
