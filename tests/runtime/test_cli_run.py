"""`workbench run` (ARCHITECTURE.md section 3): load, generate, unload, one JSON document."""

from __future__ import annotations

import json
import shutil

import pytest

from workbench.cli import main
from workbench.runtime import get_registry
from workbench.store import ModelStore, estimate

SMOL = "SmolLM2-135M-Instruct"
PROMPT = "What is the capital of France?"


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["run", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.slow
@pytest.mark.parametrize(("quant", "ratio"), [("nf4", 0.5), ("int8", 0.7)])
def test_run_answers_paris_with_a_smaller_footprint(store_env, capsys, quant, ratio):
    code, doc = run_json(capsys, SMOL, "--prompt", PROMPT, "--quant", quant, "--max-new-tokens", "16")
    assert code == 0
    assert "Paris" in doc["text"]
    for key in ("text", "prompt_tokens", "new_tokens", "ttft_s", "tokens_per_s", "load_s", "footprint_bytes",
                "devices"):
        assert key in doc
    assert doc["devices"] == ["cpu"]
    assert doc["new_tokens"] > 0
    assert doc["tokens_per_s"] > 0
    assert doc["load_s"] > 0
    unquantized = estimate(ModelStore().get(SMOL), "bfloat16").weights_bytes  # equals the bf16 footprint
    assert doc["footprint_bytes"] < ratio * unquantized
    assert get_registry().list() == []  # run unloads


def test_run_plain_text_and_progress_on_stderr(store_env, capsys):
    assert main(["run", "tiny-llama", "--prompt", "Hello", "--max-new-tokens", "3", "--seed", "1",
                 "--temperature", "0.8"]) == 0
    cap = capsys.readouterr()
    # stdout is the answer alone (streamed as generated); the numbers and progress go to stderr.
    assert "[3 tokens" in cap.err
    assert "footprint" in cap.err
    assert "[3 tokens" not in cap.out
    assert "weights" in cap.err
    assert "done" in cap.err


def test_run_refuses_pickle_with_a_json_error(store_env, tmp_path, capsys, tiny_models):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = store_env / "pickled"
    shutil.copytree(tiny_models["llama"], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save({"evil": Evil()}, folder / "pytorch_model.bin")
    code, doc = run_json(capsys, "pickled", "--prompt", "Hello")
    assert code == 1
    assert doc["error"] == "UnsafeModelError"
    assert "allow_pickle" in doc["message"]
    assert not marker.exists()
    code, doc = run_json(capsys, "nope", "--prompt", "Hello")
    assert code == 1
    assert doc["error"] == "ModelNotFoundError"
