"""Quality measurements for comparing a quantized model with its full-precision baseline.

All functions take a loaded transformers model and tokenizer and run under
``torch.inference_mode()``; torch is imported inside them so that importing
:mod:`workbench.quant` stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Chapters 1-3 (to "compared with his friend.") of Jane Austen, "Pride and Prejudice"
# (1813), public domain; text as distributed by Project Gutenberg (eBook #1342).
EVAL_TEXT_RESOURCE = "pride_and_prejudice_ch1-3.txt"
EVAL_TEXT_SOURCE = "Jane Austen, Pride and Prejudice (1813), chapters 1-3; public domain (Project Gutenberg #1342)"


def default_eval_text() -> str:
    """The held-out English prose shipped with the package (about 3,000 tokens)."""
    return resources.files("workbench.quant").joinpath("data", EVAL_TEXT_RESOURCE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class TextScore:
    """Perplexity of a text, and (optionally) the next-token log-probabilities kept for KL."""

    tokens: int
    nll_sum: float
    logprobs: Any = None  # torch.Tensor [positions, vocab] float16, on the CPU

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens) if self.tokens else float("nan")


def _input_device(model: Any) -> Any:
    return next(model.parameters()).device


def score_text(model: Any, tokenizer: Any, text: str, *, max_tokens: int = 1024, window: int = 512,
               keep_logprobs: int = 0) -> TextScore:
    """Perplexity of ``text`` (its first ``max_tokens`` tokens) in non-overlapping windows.

    Args:
        keep_logprobs: keep the next-token log-probabilities of the first this-many
            positions (as float16 on the CPU) so another variant can be compared by KL.
    """
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:max_tokens]
    device = _input_device(model)
    nll, count, kept = 0.0, 0, []
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            inputs = chunk[:-1].unsqueeze(0).to(device)
            logits = model(input_ids=inputs).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            targets = chunk[1:].to(device)
            nll -= logp.gather(1, targets.unsqueeze(1)).sum().item()
            count += len(targets)
            have = sum(k.shape[0] for k in kept)
            if have < keep_logprobs:
                kept.append(logp[: keep_logprobs - have].to("cpu", torch.float16))
    return TextScore(count, nll, torch.cat(kept) if kept else None)


def mean_kl(baseline_logprobs: Any, logprobs: Any) -> float:
    """Mean KL(baseline || variant) over positions, in nats, from two log-probability tensors."""
    import torch

    n = min(baseline_logprobs.shape[0], logprobs.shape[0])
    p_log = baseline_logprobs[:n].float()
    q_log = logprobs[:n].float()
    kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1)
    return float(torch.clamp(kl, min=0).mean())


def greedy_tokens(model: Any, tokenizer: Any, prompt: str, new_tokens: int) -> list[int]:
    """Greedy continuation token ids of ``prompt`` (through the chat template when there is one)."""
    import torch

    if getattr(tokenizer, "chat_template", None):
        from ..chat_template import render_chat_template

        # The template is code from the model folder: rendered with bounds (workbench/chat_template.py).
        text = render_chat_template(tokenizer, [{"role": "user", "content": prompt}],
                                    source=f"{getattr(tokenizer, 'name_or_path', '') or 'the model'} (chat template)")
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    device = _input_device(model)
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def match_rate(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Share of positions where two lists of continuations agree, position by position."""
    same = total = 0
    for ref, cand in zip(reference, candidate):
        total += len(ref)
        same += sum(a == b for a, b in zip(ref, cand))
    return same / total if total else float("nan")
