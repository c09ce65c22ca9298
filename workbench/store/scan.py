"""Turn one path in a store root into a :class:`ModelEntry`, reading headers only.

Nothing here loads weights, unpickles, or imports model code: configs are read as
JSON, safetensors and GGUF files by their headers. Every problem becomes the
entry's ``status``/``problem`` instead of an exception, so one broken folder never
breaks a listing (principle 4 of ARCHITECTURE.md).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from .._bounded_read import open_regular
from .._format import format_bytes
from ..errors import BrokenModelError, UntrustedFileError
from . import coverage, limits, prequant
from .entry import Format, ModelEntry, WeightStats
from .folder_json import read_json, read_json_object
from .gguf_header import TORCH_DTYPES, read_gguf_header
from .gguf_split import merge_hint, split_name
from .index_cache import IndexCache
from .moe import active_params, is_routed_expert, is_router, moe_fields
from .roots import outside_root
from .safetensors_header import TORCH_NAMES, header_length, read_safetensors_header
from .support import image_tokens, model_support
from .tokenizer_files import find_chat_template, missing_tokenizer_text, tokenizer_files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"

_EMBED = re.compile(r"(^|\.)(embed_tokens|wte|wpe|tok_embeddings|word_embeddings|position_embeddings|embeddings|token_embd|embed_positions)\.weight$")
_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$|^output\.weight$")


def classify_tensor(name: str, shape: tuple[int, ...]) -> str:
    """The role bitsandbytes gives a tensor: ``embedding``, ``lm_head``, ``linear`` or ``other``.

    transformers replaces every ``nn.Linear`` (and GPT-2's ``Conv1D``) with a
    bitsandbytes layer except the output head; embeddings, norms and biases keep
    the compute dtype. From names and shapes alone, a 2-D ``*.weight`` that is not
    an embedding or the head is a linear layer's weight.
    """
    if _HEAD.search(name):
        return "lm_head"
    if _EMBED.search(name):
        return "embedding"
    if is_routed_expert(name) or is_router(name):
        return "other"  # not nn.Linear once transformers 5 builds the model (workbench/store/moe.py)
    if len(shape) == 2 and name.endswith(".weight"):
        return "linear"
    return "other"


@dataclass(frozen=True)
class FileSummary:
    """One weight file's tensors, summed from its header: what the index cache keeps per file.

    Attributes:
        params: elements of every tensor.
        linear_params, linear_rows, linear_count: of the tensors bitsandbytes would quantize
            (:func:`classify_tensor`'s ``linear``).
        head_params: of the output head; has_embed: whether an embedding is in the file (a
            tied head counts once, :func:`weight_stats`).
        expert_params: of routed experts' tensors (:func:`workbench.store.moe.is_routed_expert`).
        bytes_by_dtype: stored bytes per dtype name (safetensors' ``F32``, ggml's ``Q4_K``...).
    """

    params: int = 0
    linear_params: int = 0
    linear_rows: int = 0
    linear_count: int = 0
    head_params: int = 0
    has_embed: bool = False
    expert_params: int = 0
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FileSummary:
        """The summary :meth:`to_json` wrote (a cache of another version is never read: IndexCache's version)."""
        return cls(**{f.name: doc[f.name] for f in dataclass_fields(cls)})


def tensor_summary(tensors: list[tuple[str, str, tuple[int, ...], int]]) -> FileSummary:
    """Sum ``(name, dtype, shape, nbytes)`` records of one file."""
    params = linear = rows = count = head = experts = 0
    has_embed = False
    by_dtype: Counter[str] = Counter()
    for name, dtype, shape, nbytes in tensors:
        numel = 1
        for d in shape:
            numel *= d
        role = classify_tensor(name, shape)
        params += numel
        by_dtype[dtype] += nbytes
        if is_routed_expert(name):
            experts += numel
        if role == "linear":
            linear += numel
            rows += shape[0]
            count += 1
        elif role == "lm_head":
            head += numel
        elif role == "embedding":
            has_embed = True
    return FileSummary(params, linear, rows, count, head, has_embed, experts, dict(by_dtype))


def weight_stats(parts: Sequence[FileSummary], tie_word_embeddings: bool) -> WeightStats:
    """Combine per-file summaries into :class:`WeightStats`: the one place files are added up."""
    params = sum(p.params for p in parts)
    head = sum(p.head_params for p in parts)
    has_embed = any(p.has_embed for p in parts)
    by_dtype: Counter[str] = Counter()
    for p in parts:
        by_dtype.update(p.bytes_by_dtype)
    # A tied head is stored on disk but shares the embedding's tensor once loaded.
    tied = head if (tie_word_embeddings and has_embed and head) else 0
    return WeightStats(
        params=params - tied,
        linear_params=sum(p.linear_params for p in parts),
        linear_rows=sum(p.linear_rows for p in parts),
        linear_count=sum(p.linear_count for p in parts),
        tied_params=tied,
        expert_params=sum(p.expert_params for p in parts),
        bytes_by_dtype=dict(by_dtype),
    )


def _gguf_stats(parts: Sequence[FileSummary]) -> WeightStats:
    # GGUF names its untied head output.weight; without it llama.cpp uses the embedding (tied).
    return weight_stats(parts, tie_word_embeddings=not any(p.head_params for p in parts))


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs keep the language model's numbers under text_config.
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            return v
    return None


def config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The entry fields a transformers ``config.json`` provides, under the names of every common family.

    Raises:
        BrokenModelError: a value of the wrong type (a string where a count goes), or a layer
            count above :data:`~workbench.store.limits.SKELETON_MAX_LAYERS` (per-layer lists
            would cost unbounded memory here and in transformers).
    """
    try:
        return _config_fields(config)
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise BrokenModelError(f"config.json holds a value of the wrong type ({type(exc).__name__}: "
                               f"{str(exc)[:200]})", hint="fix or replace config.json") from None


def _check_counts(cfg: dict[str, Any]) -> None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BrokenModelError(f"config.json: {key} is {str(value)[:40]!r}, not a layer count",
                                   hint="fix or replace config.json")
        if value > limits.SKELETON_MAX_LAYERS:
            raise BrokenModelError(f"config.json: {key} is {value}, more than the {limits.SKELETON_MAX_LAYERS} "
                                   "layers the workbench accepts (the deepest public models have ~130)",
                                   hint="fix or replace config.json")


def _config_fields(config: dict[str, Any]) -> dict[str, Any]:
    cfg = _text_config(config)
    _check_counts(config)
    _check_counts(cfg)
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    quant = config.get("quantization_config")
    quant_name = prequant.quant_name(quant) if isinstance(quant, dict) else None
    archs = config.get("architectures") or ()
    return {
        "model_type": config.get("model_type"),
        "architectures": tuple(a for a in archs if isinstance(a, str)),
        "context_length": _first(cfg, "max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx"),
        "num_layers": _first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "head_dim": head_dim,
        "vocab_size": cfg.get("vocab_size"),
        "quantization": quant_name,
        # As the config says it (display only: the cache is measured, workbench/store/kv_cache.py).
        "num_kv_heads": _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv") or heads,
        **moe_fields(cfg),
    }


_CARD_LINE = 4096


def _license_from_card(folder: Path) -> str | None:
    card = folder / "README.md"
    try:
        fd, _st = open_regular(card)
    except (OSError, UntrustedFileError):
        return None
    try:
        # Only the front matter's first 200 lines of 4 KB are read, however large the card.
        with open(fd, encoding="utf-8", errors="replace") as fh:
            if fh.readline(_CARD_LINE).strip() != "---":
                return None
            for _ in range(200):
                line = fh.readline(_CARD_LINE)
                if not line or line.strip() == "---":
                    return None
                m = re.match(r"^license:\s*['\"]?([^'\"#\n]+)", line)
                if m:
                    return m.group(1).strip()
    except OSError:
        return None
    return None


def _read_config(path: Path | None) -> dict[str, Any] | None:
    """A folder's ``config.json`` as a dict, ``None`` when there is none.

    Raises:
        BrokenModelError: the file is not a JSON object, or breaks a read bound.
    """
    if path is None:
        return None
    try:
        return read_json_object(path)
    except FileNotFoundError:
        return None


def _check_load_json(files: dict[str, Path]) -> dict[str, Any]:
    """Parse (within bounds) every JSON file transformers reads at load time; ``name -> document``.

    Raises:
        BrokenModelError: one of them breaks a bound or is not JSON: the load would fail on it,
            or cost unbounded time and memory in the kernel.
    """
    docs: dict[str, Any] = {}
    for name in limits.LOAD_TIME_JSON:
        if name in files:
            try:
                docs[name] = read_json(files[name])
            except FileNotFoundError:
                continue
    return docs


def _walk(folder: Path) -> tuple[dict[str, Path], int]:
    """``(the folder's own visible regular files by name, the bytes of every file under it)``.

    Iterative, and bounded by :data:`~workbench.store.limits.MAX_FOLDER_FILES` entries and
    :data:`~workbench.store.limits.MAX_FOLDER_DEPTH` levels (``os.walk`` recurses, and a
    folder nested a few thousand levels deep would raise ``RecursionError``).

    Raises:
        BrokenModelError: more files or deeper folders than the bounds.
    """
    top: dict[str, Path] = {}
    total = 0
    seen = 0
    stack: list[tuple[str, int]] = [(str(folder), 0)]
    while stack:
        where, depth = stack.pop()
        try:
            it = os.scandir(where)
        except OSError:
            continue
        with it:
            for de in it:
                seen += 1
                if seen > limits.MAX_FOLDER_FILES:
                    raise BrokenModelError(f"{folder.name} holds more than {limits.MAX_FOLDER_FILES} files and "
                                           "folders, more than the workbench walks for one model",
                                           hint="move what is not part of the model out of the folder",
                                           path=folder)
                try:
                    if de.is_dir(follow_symlinks=False):
                        if depth + 1 > limits.MAX_FOLDER_DEPTH:
                            raise BrokenModelError(
                                f"{folder.name} nests folders more than {limits.MAX_FOLDER_DEPTH} levels deep",
                                hint="move what is not part of the model out of the folder", path=folder)
                        stack.append((de.path, depth + 1))
                    elif de.is_file():
                        total += de.stat().st_size
                        if depth == 0 and not de.name.startswith("."):
                            top[de.name] = Path(de.path)
                    elif depth == 0 and not de.name.startswith(".") and not de.is_dir():
                        # A FIFO, socket or device (or a link to one): kept, so that the bounded reader
                        # that opens it names what it is, instead of the file being "missing".
                        top[de.name] = Path(de.path)
                except OSError:
                    continue
    return top, total


def _folder_size(folder: Path) -> int:
    return _walk(folder)[1]


def entry_name(path: Path) -> str:
    """The store name of a candidate path: a folder's name, a GGUF's stem, a split GGUF's prefix."""
    if path.is_dir():
        return path.name
    split = split_name(path.name)
    return split.base if split else path.stem


class Scanner:
    """Builds entries for paths in one root, using ``cache`` to skip unchanged headers."""

    def __init__(self, root: Path, writable: bool, cache: IndexCache):
        self.root = root
        self.writable = writable
        self.cache = cache

    def entry(self, path: Path) -> ModelEntry:
        """Describe ``path`` (a model folder or a ``.gguf`` file); never raises for bad content."""
        name = entry_name(path)
        base = {"name": name, "path": path, "root": self.root, "writable": self.writable}
        real = outside_root(self.root, path)
        if real is not None:
            return ModelEntry(**base, format="safetensors", status="unsafe",
                              problem=f"{path.name} is a link to {real}, outside its store root {self.root}; "
                                      "copy the model into the store instead of linking it")
        try:
            if path.is_file():
                return self._gguf(base, path, path.parent, size=path.stat().st_size)
            return self._folder(base, path)
        except BrokenModelError as exc:
            return ModelEntry(**base, format=_broken_format(path), status="broken", problem=str(exc))
        except OSError as exc:
            return ModelEntry(**base, format="safetensors", status="broken",
                              problem=f"{path.name}: cannot be read ({exc.strerror or exc})")
        except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError) as exc:
            # A header or config value of a type no real checkpoint has (a string where a count
            # goes) must break this entry, never the listing (ARCHITECTURE.md section 2, principle 4).
            return ModelEntry(**base, format=_broken_format(path), status="broken",
                              problem=f"{path.name}: holds a value the workbench cannot use "
                                      f"({type(exc).__name__}: {str(exc)[:200]}); re-download or re-export it")

    def _summary(self, file: Path, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """``file``'s cached header summary (``{"tensors": FileSummary JSON, ...}``), computed on a miss.

        Raises:
            BrokenModelError: the header could not be read (the problem is cached too, until the file changes).
        """
        summary = self.cache.get(file, lambda: compute(file))
        if "problem" in summary:
            raise BrokenModelError(summary["problem"])
        return summary

    # -- GGUF -------------------------------------------------------------------------------

    def _gguf(self, base: dict[str, Any], file: Path, folder: Path, size: int) -> ModelEntry:
        if split_name(file.name):
            return self._split_gguf(base, file, folder, size if folder != self.root else None)
        stats, meta = self._gguf_fields([self._summary(file, _gguf_summary)], folder)
        return ModelEntry(
            **base, format="gguf", size_bytes=size, gguf_file=file.name, weight_files=(file.name,),
            params=stats.params, weights=stats, **meta,
        )

    def _gguf_fields(self, summaries: list[dict[str, Any]], folder: Path) -> tuple[WeightStats, dict[str, Any]]:
        """``(weights of every part, the entry fields)`` of a GGUF file or of the parts of a split one."""
        stats = _gguf_stats([FileSummary.from_json(s["tensors"]) for s in summaries])
        meta = dict(summaries[0]["fields"])  # a split GGUF's first part holds the metadata
        meta["architectures"] = tuple(meta.get("architectures") or ())
        if not meta.get("license") and folder != self.root:
            meta["license"] = _license_from_card(folder)
        meta["active_params"] = active_params(stats.params, stats.expert_params, meta.get("num_experts"),
                                              meta.get("experts_per_token"))
        return stats, meta

    def _split_gguf(self, base: dict[str, Any], file: Path, folder: Path, folder_size: int | None) -> ModelEntry:
        split = split_name(file.name)
        assert split is not None
        missing = [n for n in split.parts if not (folder / n).is_file()]
        if missing:
            raise BrokenModelError(f"part {missing[0]} of the split GGUF {split.base} is missing"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                   + f"; {split.count - len(missing)} of {split.count} parts are in {folder}")
        stats, meta = self._gguf_fields([self._summary(folder / n, _gguf_summary) for n in split.parts], folder)
        size = folder_size if folder_size is not None else sum((folder / n).stat().st_size for n in split.parts)
        return ModelEntry(
            **base, format="gguf", size_bytes=size, gguf_file=split.parts[0], weight_files=split.parts,
            params=stats.params, weights=stats, status="broken",
            problem=f"{split.parts[0]} is a GGUF split into {split.count} parts, and transformers loads only "
                    f"single-file GGUF; {merge_hint(split.parts[0], split.base)}",
            **meta,
        )

    # -- folders ----------------------------------------------------------------------------

    def _folder(self, base: dict[str, Any], folder: Path) -> ModelEntry:
        files, size = _walk(folder)
        safetensors = sorted(n for n in files if n.endswith(".safetensors"))
        ggufs = sorted(n for n in files if n.endswith(".gguf"))
        pickles = sorted(n for n in files if n.endswith(PICKLE_SUFFIXES) and n != "training_args.bin")
        docs = _check_load_json(files)
        config = docs.get("config.json")
        if config is not None and not isinstance(config, dict):
            raise BrokenModelError("config.json is not a JSON object", hint="fix or replace config.json")

        if not safetensors and not pickles and ggufs:
            whole = [n for n in ggufs if not split_name(n)]
            return self._gguf(base, files[(whole or ggufs)[0]], folder, size=size)

        chat = find_chat_template(folder, docs=docs)
        extra = {
            "size_bytes": size,
            "has_tokenizer": bool(tokenizer_files(folder)),
            "has_chat_template": bool(chat and chat.template),
            "chat_template_source": chat.source if chat else None,
            "license": _license_from_card(folder),
            **(config_fields(config) if config else {}),
        }
        if config is not None and config.get("auto_map"):
            auto_map = config["auto_map"]
            classes = ", ".join(sorted(str(v)[:100] for v in (auto_map.values() if isinstance(auto_map, dict)
                                                              else [auto_map])))[:200]
            return ModelEntry(**base, format="safetensors" if safetensors else "pickle", status="unsafe",
                              problem=f"config.json needs remote code ({classes}); it runs only if you pass "
                                      "trust_remote_code=True for this model", **extra)
        support = model_support(config, cache=self.cache) if config is not None else None
        if support is not None:
            extra["auto_class"] = support.auto_class
            if support.takes_images:
                extra["image_tokens"] = image_tokens(config, [docs.get("processor_config.json"),
                                                              docs.get("preprocessor_config.json")])
        if support is not None and not support.ok and pickles and not safetensors:
            # No opt-in makes the runtime run it, so that is what the entry says rather than "unsafe".
            return ModelEntry(**base, format="pickle", status="unsupported", problem=support.reason,
                              weight_files=tuple(pickles), **extra)
        if not safetensors:
            if pickles:
                return ModelEntry(**base, format="pickle", status="unsafe", weight_files=tuple(pickles),
                                  problem=f"weights are pickle files ({', '.join(pickles[:3])}), which can run code "
                                          "when loaded; convert them to safetensors, or load with allow_pickle=True "
                                          "if you trust their source", **extra)
            raise BrokenModelError("no weight files (.safetensors, .gguf or .bin) in the folder")
        if config is None:
            raise BrokenModelError("config.json is missing; transformers needs it to build the model")
        return self._safetensors_folder(base, folder, files, safetensors, config, extra,
                                        None if support is None or support.ok else support.reason)

    def _safetensors_folder(self, base: dict[str, Any], folder: Path, files: dict[str, Path], safetensors: list[str],
                            config: dict[str, Any], extra: dict[str, Any], unsupported: str | None = None) -> ModelEntry:
        """The entry of a folder of safetensors weights (sharded or not) with its ``config.json``.

        ``unsupported``: why the runtime does not run it (:mod:`.support`); the entry is then
        ``unsupported`` unless its weights are broken (a missing tokenizer matters less than that).
        """
        weight_files = self._shard_names(files) if INDEX_NAME in files else safetensors
        if len(weight_files) > limits.MAX_WEIGHT_FILES:
            raise BrokenModelError(f"{len(weight_files)} weight files, more than the {limits.MAX_WEIGHT_FILES} "
                                   "the workbench reads for one model", hint="re-save it in fewer shards")
        self._check_header_budget([files[f] for f in weight_files])
        parts = [self._summary(files[fname], _safetensors_summary) for fname in weight_files]
        if INDEX_NAME in files:
            _check_index_matches(files[INDEX_NAME], weight_files, parts)
        tie = bool(_text_config(config).get("tie_word_embeddings", config.get("tie_word_embeddings", True)))
        stats = weight_stats([FileSummary.from_json(p["tensors"]) for p in parts], tie)
        dominant = max(stats.bytes_by_dtype.items(), key=lambda kv: kv[1])[0] if stats.bytes_by_dtype else None
        # "ok" means it loads and runs prompts: without a tokenizer it does neither, so it is broken.
        problem = None if extra["has_tokenizer"] else missing_tokenizer_text(folder)
        found = {"params": stats.params, "dtype": TORCH_NAMES.get(dominant, dominant), "weights": stats}
        # Pre-quantized: original counts, the config's dtype, and the package loading needs.
        found.update(prequant.entry_fields(config, parts, stats))
        extra["active_params"] = active_params(found["params"], stats.expert_params, extra.get("num_experts"),
                                               extra.get("experts_per_token"))
        files_problem = found.pop("problem", None) or _coverage_problem(folder, weight_files, parts, config)
        broken = problem or files_problem
        status = "unsupported" if unsupported and not files_problem else "broken" if broken else "ok"
        problem = unsupported if status == "unsupported" else broken
        return ModelEntry(**base, format="safetensors", weight_files=tuple(weight_files),
                          status=status, problem=problem, **{**extra, **found})

    def _check_header_budget(self, paths: list[Path]) -> None:
        """Refuse, before parsing any, weight files whose headers add up to more than
        :data:`~workbench.store.limits.ENTRY_HEADER_MAX_BYTES` (cached files count their
        parsed size, the others the length their first 8 bytes declare).

        Raises:
            BrokenModelError: over the budget; never cached, it is the entry's verdict.
        """
        total = 0
        for p in paths:
            cached = self.cache.peek(p)
            total += cached.get("header_bytes", 0) if cached is not None else (header_length(p) or 0)
        if total > limits.ENTRY_HEADER_MAX_BYTES:
            raise BrokenModelError(f"its weight files' headers add up to {format_bytes(total)}, more than the "
                                   f"{format_bytes(limits.ENTRY_HEADER_MAX_BYTES)} the workbench parses for one "
                                   "model (real checkpoints need a fraction of that), so none was read",
                                   hint="if the checkpoint is genuine, re-save it with fewer tensors")

    def _shard_names(self, files: dict[str, Path]) -> list[str]:
        """The shards the index lists, all present.

        Raises:
            BrokenModelError: a listed shard is missing.
        """
        shard_names = self._shards_from_index(files[INDEX_NAME])
        missing = [s for s in shard_names if s not in files]
        if missing:
            raise BrokenModelError(f"shard {missing[0]} listed in {INDEX_NAME} is missing"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return shard_names

    @staticmethod
    def _shards_from_index(index: Path) -> list[str]:
        try:
            weight_map = read_json_object(index)["weight_map"]
            names = sorted(set(weight_map.values()))
        except BrokenModelError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BrokenModelError(f"{INDEX_NAME} is not a valid shard index ({exc})") from None
        if not all(isinstance(n, str) for n in names):
            raise BrokenModelError(f"{INDEX_NAME} is not a valid shard index (a shard name is not a string)")
        return names


def _check_index_matches(index: Path, shards: list[str], parts: list[dict[str, Any]]) -> None:
    """The shard index and the shards' headers must name the same tensors, each where the index says.

    transformers loads each tensor from the shard the index names: a tensor the shard lacks is
    left at its random initialisation, and a tensor no index entry names is never loaded (and
    would be counted in ``params``). Either is a broken checkpoint.

    Raises:
        BrokenModelError: naming (up to three of) the tensors at fault.
    """
    weight_map = read_json_object(index)["weight_map"]
    held = {shard: set(part.get("names") or ()) for shard, part in zip(shards, parts)}
    stale = sorted(name for name, shard in weight_map.items() if name not in held.get(shard, ()))
    listed = set(weight_map)
    extra = sorted(f"{name} (in {shard})" for shard, names in held.items() for name in names
                   if name not in listed or weight_map.get(name) != shard)

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    if stale:
        raise BrokenModelError(
            f"{INDEX_NAME} names {few(stale)} in shards that do not hold them (a stale index): a load would leave "
            "them randomly initialised", hint="re-download the checkpoint, or re-save it with save_pretrained")
    if extra:
        raise BrokenModelError(
            f"the shards hold {few(extra)}, which {INDEX_NAME} does not list there: a load would never read them",
            hint="re-download the checkpoint, or re-save it with save_pretrained")


def _coverage_problem(folder: Path, weight_files: list[str], parts: list[dict[str, Any]],
                      config: dict[str, Any]) -> str | None:
    """The coverage verdict (:mod:`.coverage`) computed before for these tensors, if any: a listing builds none."""
    if not coverage.applies(weight_files, config):
        return None
    digests = [part.get("digest") for part in parts]
    if not all(isinstance(d, str) for d in digests):
        return None
    return coverage.cached_problem(folder, coverage.checkpoint_digest(digests))


def _safetensors_summary(path: Path) -> dict[str, Any]:
    try:
        hdr = read_safetensors_header(path)
    except BrokenModelError as exc:
        return {"problem": exc.message}
    records = [(t.name, t.dtype, t.shape, t.nbytes) for t in hdr.tensors]
    summary: dict[str, Any] = {"tensors": tensor_summary(records).to_json()}
    summary["header_bytes"] = hdr.header_bytes
    summary["names"] = [t.name for t in hdr.tensors]  # checked against a shard index (_check_index_matches)
    summary["digest"] = coverage.file_digest((t.name, t.shape) for t in hdr.tensors)  # the coverage verdict's key
    packed = prequant.file_summary(path, records)
    if packed is not None:
        summary["prequant"] = packed
    return summary


def _broken_format(path: Path) -> Format:
    """The format a broken entry is listed with: what its weight files are (a lone GGUF part is ``gguf``)."""
    if path.suffix == ".gguf":
        return "gguf"
    try:
        names = [p.name for p in path.iterdir()] if path.is_dir() else []
    except OSError:
        names = []
    for suffixes, fmt in ((".safetensors", "safetensors"), (".gguf", "gguf"), (PICKLE_SUFFIXES, "pickle")):
        if any(n.endswith(suffixes) for n in names):
            return fmt  # type: ignore[return-value]
    return "safetensors"


def _gguf_summary(path: Path) -> dict[str, Any]:
    try:
        hdr = read_gguf_header(path)
    except BrokenModelError as exc:
        return {"problem": exc.message}
    # ggml stores shapes fastest-varying first; reverse to torch order for row counts.
    tensors = tensor_summary([(t.name, t.type_name, tuple(reversed(t.shape)), t.nbytes or 0) for t in hdr.tensors])
    heads = hdr.arch_value("attention.head_count")
    hidden = hdr.arch_value("embedding_length")
    tokens = hdr.metadata.get("tokenizer.ggml.tokens")
    vocab = hdr.arch_value("vocab_size") or getattr(tokens, "length", None) or (len(tokens) if isinstance(tokens, list) else None)
    types = Counter()
    for t in hdr.tensors:
        types[t.type_name] += t.nbytes or 0
    dominant = types.most_common(1)[0][0] if types else None
    fields = {
        "model_type": hdr.architecture,
        "architectures": (),
        "context_length": hdr.arch_value("context_length"),
        "num_layers": hdr.arch_value("block_count"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": hdr.arch_value("attention.head_count_kv") or heads,
        "head_dim": hdr.arch_value("attention.key_length") or (hidden // heads if hidden and heads else None),
        "vocab_size": vocab,
        # ggml type names (Q4_1) are quantizations; dtype is a torch name or None, as for safetensors.
        "quantization": hdr.file_type_name or (dominant if dominant not in TORCH_DTYPES else None),
        "dtype": TORCH_DTYPES.get(dominant or ""),
        "has_chat_template": bool(hdr.metadata.get("tokenizer.chat_template")),
        "chat_template_source": "gguf" if hdr.metadata.get("tokenizer.chat_template") else None,
        "has_tokenizer": tokens is not None,
        "license": hdr.metadata.get("general.license"),
        "num_experts": hdr.arch_value("expert_count") or None,
        "experts_per_token": hdr.arch_value("expert_used_count") or None,
    }
    return {"tensors": tensors.to_json(), "fields": fields}
