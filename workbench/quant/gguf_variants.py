"""GGUF rows of the quantization study: which store GGUFs are the same model, llama.cpp's
quantizer, and perplexity/KL/greedy tokens from llama.cpp's own logits.

Quality is measured on the token ids of the study's reference tokenizer (the baseline's), fed
to llama.cpp as ids (``Llama.eval``), so every row scores the same positions and a GGUF row's
next-token distributions compare with the baseline's position by position (KL), whatever
llama.cpp's own tokenizer would have made of the text.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WorkbenchError
from ..store import ModelEntry

#: llama.cpp file types the study quantizes to (``llama_cpp.LLAMA_FTYPE_MOSTLY_<name>``).
QUANTIZE_TYPES = ("Q8_0", "Q4_K_M")
#: GGUF file types llama.cpp's quantizer may start from without re-quantizing.
UNQUANTIZED_TYPES = ("F32", "F16", "BF16")

_QUANT_SUFFIX = re.compile(r"[-_.](gguf|i?q\d\w*|f16|bf16|f32)$", re.IGNORECASE)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def base_name(name: str) -> str:
    """An entry name without its GGUF and quantization suffixes (``Foo-GGUF``, ``Foo.Q4_K_M``), normalized."""
    prev = None
    while prev != name:
        prev, name = name, _QUANT_SUFFIX.sub("", name)
    return _norm(name)


def same_model(gguf_entry: ModelEntry, model: ModelEntry) -> bool:
    """Whether a GGUF entry is a quantization of ``model``, by name.

    The rule: the GGUF's entry name or its file's stem, with GGUF and quantization suffixes
    taken off (:func:`base_name`), equals the model's name (case and punctuation aside), and
    the architecture agrees with the model's when both are known. Names are all a store knows;
    a user who knows better lists the entries (``gguf:NAME`` variants).
    """
    if gguf_entry.format != "gguf" or not gguf_entry.ok:
        return False
    want = base_name(model.name)
    names = {base_name(gguf_entry.name), base_name(Path(gguf_entry.gguf_file or "").stem)}
    if want not in names:
        return False
    return not (gguf_entry.model_type and model.model_type and gguf_entry.model_type != model.model_type)


def store_ggufs(entries: Sequence[ModelEntry], model: ModelEntry) -> list[ModelEntry]:
    """The GGUF entries among ``entries`` that :func:`same_model` takes for ``model``, by name."""
    return sorted((e for e in entries if same_model(e, model)), key=lambda e: e.name)


def quantize(src: str | Path, dest: str | Path, file_type: str, *, threads: int | None = None) -> Path:
    """llama.cpp's own quantizer (``llama_model_quantize``) from ``src`` to ``dest`` at ``file_type``.

    Tensors whose rows a k-quant cannot split (not a multiple of 256 wide) get llama.cpp's own
    fallback type, as ``llama-quantize`` does.

    Raises:
        ConfigError: a file type not in :data:`QUANTIZE_TYPES`.
        WorkbenchError: llama.cpp refused (its return code, the files named).
    """
    import llama_cpp

    from ..devices.cgroup import usable_cpus

    if file_type not in QUANTIZE_TYPES:
        raise ConfigError(f"llama.cpp quantization {file_type!r} is not offered", hint=f"use {', '.join(QUANTIZE_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = threads or usable_cpus()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dest).is_file():
        raise WorkbenchError(f"llama.cpp could not quantize {src} to {file_type} ({dest}): return code {rc}",
                             hint="check that the source is a complete F16/BF16/F32 GGUF")
    return Path(dest)


class GGUFScorer:
    """A llama.cpp context over one GGUF that returns logits for every position (``logits_all``).

    Separate from the loaded model (whose context keeps only the last position's logits):
    llama.cpp maps the file, so the two share the weights' pages.

    Args:
        path: the GGUF file.
        window: the longest token sequence scored at once (the context is this plus one).
    """

    def __init__(self, path: str | Path, window: int) -> None:
        import llama_cpp

        from ..devices.cgroup import usable_cpus

        threads = usable_cpus()
        self.window = window
        self.llama = llama_cpp.Llama(model_path=str(path), n_ctx=window + 64, n_batch=window + 64,
                                     n_ubatch=window + 64, logits_all=True, n_threads=threads,
                                     n_threads_batch=threads, verbose=False)

    def close(self) -> None:
        llama, self.llama = self.llama, None
        if llama is not None:
            llama.close()

    def __enter__(self) -> GGUFScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_vocab(self) -> int:
        return int(self.llama.n_vocab())

    def logprobs(self, ids: Sequence[int]) -> Any:
        """Next-token log-probabilities after each of ``ids``: a float32 tensor ``[len(ids), n_vocab]``."""
        import numpy as np
        import torch

        self.llama.reset()
        self.llama.eval(list(ids))
        logits = torch.from_numpy(np.array(self.llama.scores[: len(ids)], dtype=np.float32))
        return torch.log_softmax(logits, dim=-1)

    def score(self, ids: Sequence[int], *, keep_logprobs: int = 0) -> Any:
        """Perplexity of ``ids`` in non-overlapping windows, as :func:`~workbench.quant.metrics.score_text`."""
        import torch

        from .metrics import TextScore

        ids = list(ids)
        nll, count, kept = 0.0, 0, []
        for start in range(0, len(ids) - 1, self.window):
            chunk = ids[start:start + self.window + 1]
            if len(chunk) < 2:
                break
            logp = self.logprobs(chunk[:-1])
            targets = torch.tensor(chunk[1:]).unsqueeze(1)
            nll -= logp.gather(1, targets).sum().item()
            count += len(chunk) - 1
            have = sum(k.shape[0] for k in kept)
            if have < keep_logprobs:
                kept.append(logp[: keep_logprobs - have].to(torch.float16))
        return TextScore(count, nll, torch.cat(kept) if kept else None)

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """``new_tokens`` greedy token ids after ``ids``, end-of-generation tokens barred, as the
        transformers path's ``min_new_tokens`` bars EOS: both continue past the answer alike."""
        import llama_cpp
        import numpy as np

        vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        eog = np.array([i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)], dtype=np.int64)

        def bar_eog(_ids: Any, scores: Any) -> Any:
            scores[eog] = -np.inf
            return scores

        out: list[int] = []
        for token in self.llama.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True,
                                         logits_processor=llama_cpp.LogitsProcessorList([bar_eog])):
            out.append(int(token))
            if len(out) >= new_tokens:
                break
        return out


def reference_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The evaluation text's token ids as the reference tokenizer makes them (no special tokens).

    ``tokenizer`` is a transformers tokenizer, or the workbench's GGUF tokenizer when no
    transformers baseline ran (both take ``encode(text, add_special_tokens=False)``)."""
    return list(tokenizer.encode(text, add_special_tokens=False))[:max_tokens]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt's ids through the reference tokenizer's chat template, as ``greedy_tokens`` renders it."""
    if getattr(tokenizer, "chat_template", None):
        from ..chat_template import render_chat_template

        text = render_chat_template(tokenizer, [{"role": "user", "content": prompt}],
                                    source=f"{getattr(tokenizer, 'name_or_path', '') or 'the model'} (chat template)")
        return reference_ids(tokenizer, text, 1 << 30)
    return list(tokenizer.encode(prompt))
