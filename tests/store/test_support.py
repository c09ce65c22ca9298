""""ok" answers the loader's question: the auto class transformers builds the model with.

The right answers come from transformers itself: the auto class a verdict names builds
(``from_config`` on the meta device) exactly the class it names, and the auto classes the
workbench runs refuse (or build another model than the checkpoint's) what it calls unsupported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_multimodal import build_unsupported
from workbench.errors import UnsupportedModelError
from workbench.store import ModelStore
from workbench.store.safety import check_entry
from workbench.store.support import CAUSAL_LM, IMAGE_TEXT_TO_TEXT, model_support

# (transformers config class, its kwargs, the checkpoint's architectures)
CONFIGS = {
    "llama": ("LlamaConfig", {}, ["LlamaForCausalLM"]),
    "gpt2": ("GPT2Config", {}, ["GPT2LMHeadModel"]),
    "llava": ("LlavaConfig", {}, ["LlavaForConditionalGeneration"]),
    "qwen2_vl": ("Qwen2VLConfig", {}, ["Qwen2VLForConditionalGeneration"]),
    # In both the causal-LM and the image-text-to-text tables: it takes images, so the latter.
    "gemma3": ("Gemma3Config", {}, ["Gemma3ForConditionalGeneration"]),
    "gemma3-text": ("Gemma3TextConfig", {}, ["Gemma3ForCausalLM"]),
    "t5": ("T5Config", {}, ["T5ForConditionalGeneration"]),
    "bart": ("BartConfig", {}, ["BartForConditionalGeneration"]),
    "bert": ("BertConfig", {}, ["BertForMaskedLM"]),
    "bert-decoder": ("BertConfig", {"is_decoder": True}, ["BertLMHeadModel"]),
}


def _config(key: str) -> dict:
    import transformers

    cls, kwargs, archs = CONFIGS[key]
    config = getattr(transformers, cls)(**kwargs).to_dict()
    config["architectures"] = archs
    return json.loads(json.dumps(config, default=str))  # as config.json holds it


def _built_by(auto_class: str, config: dict) -> str | None:
    """The class name ``auto_class.from_config`` builds for ``config`` on the meta device; None if it refuses."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    try:
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(cfg)
    except ValueError:
        return None
    return type(model).__name__


@pytest.mark.parametrize("key", ["llama", "gpt2", "llava", "qwen2_vl", "gemma3", "gemma3-text", "bert-decoder"])
def test_ok_names_the_auto_class_that_builds_the_checkpoints_class(key):
    config = _config(key)
    verdict = model_support(config)
    assert verdict.ok, verdict.reason
    assert verdict.reason is None
    assert _built_by(verdict.auto_class, config) == verdict.model_class == config["architectures"][0]
    assert verdict.takes_images == (key in ("llava", "qwen2_vl", "gemma3"))


@pytest.mark.parametrize("key,auto_class,words", [
    ("t5", "AutoModelForSeq2SeqLM", "encoder-decoder"),
    ("bart", "AutoModelForSeq2SeqLM", "encoder-decoder"),
    ("bert", "AutoModelForMaskedLM", "encoder-only"),
])
def test_unsupported_families_are_what_the_runtime_cannot_run(key, auto_class, words):
    config = _config(key)
    verdict = model_support(config)
    assert verdict.status == "unsupported"
    assert verdict.auto_class is None
    assert config["architectures"][0] in verdict.reason
    assert auto_class in verdict.reason
    assert words in verdict.reason
    # transformers agrees: the auto class named loads it, and neither runtime class builds this checkpoint's model.
    assert _built_by(auto_class, config) == config["architectures"][0]
    for runtime_class in (CAUSAL_LM, IMAGE_TEXT_TO_TEXT):
        assert _built_by(runtime_class, config) != config["architectures"][0]


def test_configs_without_a_usable_model_type_are_unsupported_with_a_reason():
    assert "no model_type" in model_support({}).reason
    unknown = model_support({"model_type": "no-such-family", "architectures": ["NoSuchForCausalLM"]})
    assert unknown.status == "unsupported"
    assert "no-such-family" in unknown.reason
    base = model_support({"model_type": "llama", "architectures": ["LlamaModel"]})
    assert base.status == "unsupported"
    assert "AutoModel," in base.reason
    assert "does not generate" in base.reason


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    build_unsupported("t5", root / "tiny-t5")
    build_unsupported("bert", root / "tiny-bert")
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    return root


def test_store_lists_unsupported_with_the_reason_and_refuses_the_load(mixed_root):
    store = ModelStore([mixed_root], cache_path=None)
    by_name = {e.name: e for e in store.list()}
    assert by_name["tiny-llama"].status == "ok"
    assert by_name["tiny-llama"].auto_class == CAUSAL_LM
    for name, words in (("tiny-t5", "encoder-decoder"), ("tiny-bert", "encoder-only")):
        entry = by_name[name]
        assert entry.status == "unsupported"
        assert words in entry.problem
        assert entry.auto_class is None
        assert entry.params
        assert entry.params > 0  # still read from the headers
        with pytest.raises(UnsupportedModelError) as err:
            check_entry(entry, trust_remote_code=True, allow_pickle=True)
        assert name in str(err.value)
        assert words in str(err.value)
        assert err.value.context["reason"] == entry.problem


def test_unsupported_pickle_checkpoint_says_unsupported_not_unsafe(mixed_root, tmp_path):
    shutil.copytree(mixed_root / "tiny-t5", tmp_path / "t5-bin")
    (tmp_path / "t5-bin" / "model.safetensors").rename(tmp_path / "t5-bin" / "pytorch_model.bin")
    entry = ModelStore([tmp_path], cache_path=None).get("t5-bin")
    assert (entry.status, entry.format) == ("unsupported", "pickle")
    assert "encoder-decoder" in entry.problem


def test_store_list_json_and_the_cached_tables_need_no_torch(mixed_root, tmp_path):
    """The CLI listing (cold cache, then warm) says unsupported without importing torch or transformers."""
    import os

    env = {**os.environ, "WORKBENCH_STORE": str(mixed_root), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import io, json, sys, contextlib; from workbench.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): main(['store', 'list', '--json'])\n"
            "items = {i['name']: i for i in json.loads(buf.getvalue())}\n"
            "print(json.dumps({'items': {k: [v['status'], v['problem'], v.get('auto_class')] for k, v in items.items()},"
            " 'heavy': sorted(m for m in ('torch', 'transformers') if m in sys.modules)}))")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["heavy"] == []
        assert doc["items"]["tiny-llama"] == ["ok", None, CAUSAL_LM]
        assert doc["items"]["tiny-t5"][0] == "unsupported"
        assert "AutoModelForSeq2SeqLM" in doc["items"]["tiny-t5"][1]
        assert doc["items"]["tiny-bert"][0] == "unsupported"
    assert any((tmp_path / "cache").rglob("*.json"))  # the tables were kept for the second listing


def test_rest_document_and_store_panel_show_unsupported_with_the_reason(mixed_root):
    from workbench.server.documents import store_document
    from workbench.ui.store_panel import entries_table_html, entry_details_html

    store = ModelStore([mixed_root], cache_path=None)
    doc = {d["name"]: d for d in store_document(store)}
    assert doc["tiny-t5"]["status"] == "unsupported"
    assert "encoder-decoder" in doc["tiny-t5"]["problem"]
    assert doc["tiny-llama"]["auto_class"] == CAUSAL_LM
    t5 = store.get("tiny-t5")
    assert ">unsupported<" in entries_table_html(store.list())
    details = entry_details_html(t5, devices=["cpu"])
    assert "unsupported:" in details
    assert "AutoModelForSeq2SeqLM" in details
    assert "fits on" not in details
