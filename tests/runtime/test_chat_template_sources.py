"""What the store reports as a model's chat template is what a loaded model's prompts get.

For every place transformers reads a template from (and the processor-style
``chat_template.json`` that AutoTokenizer ignores), a tiny model is loaded for
real and a prompt rendered: the text must come from the template the store named.
A folder without tokenizer files fails to load with a typed error naming the
folder and the files looked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from store.test_tokenizer_and_templates import LAYOUTS, make, strip_templates, tmpl
from workbench.errors import BrokenModelError, MissingTokenizerError
from workbench.runtime import LoadSpec
from workbench.runtime.prompts import render_prompt
from workbench.runtime.registry import Registry
from workbench.store import ModelStore
from workbench.store.tokenizer_files import TOKENIZER_FILES

MARKERS = {"jinja": "[[jinja]]", "config-string": "[[config]]", "config-list": "[[config-default]]",
           "jinja-and-extra-dir": "[[jinja-main]]", "jinja-overrides-config": "[[winner]]",
           "extra-dir-only": "[[dir-default]]"}


def _render(root: Path, name: str) -> str:
    store = ModelStore([root], cache_path=None)
    reg = Registry(store)
    loaded = reg.load(LoadSpec(name, devices=("cpu",)))
    try:
        text, _special = render_prompt(loaded.tokenizer, "hi there")
    finally:
        reg.unload_all()
    return text


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loaded_model_renders_with_the_template_the_store_reports(tiny_models, tmp_path, layout):
    folder = make(tiny_models, tmp_path, layout)
    assert ModelStore([tmp_path], cache_path=None).get(folder.name).chat_template_source == LAYOUTS[layout][1]
    text = _render(tmp_path, folder.name)
    assert MARKERS[layout] in text
    assert text.endswith("<go>")
    assert "hi there" in text
    assert "[[loser]]" not in text


def test_chat_template_json_is_applied(tiny_models, tmp_path):
    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "proc"))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": tmpl("processor")}))
    assert ModelStore([tmp_path], cache_path=None).get("proc").chat_template_source == "chat_template.json"
    text = _render(tmp_path, "proc")
    assert text == "[[processor]]hi there<go>"


def test_no_default_template_renders_the_plain_prompt(tiny_models, tmp_path):
    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "nodefault"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": tmpl("tools")}]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert not ModelStore([tmp_path], cache_path=None).get("nodefault").has_chat_template
    assert _render(tmp_path, "nodefault") == "hi there"


def test_load_without_tokenizer_names_folder_and_files(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "no tok")
    (folder / "tokenizer.json").unlink()
    reg = Registry(ModelStore([tmp_path], cache_path=None))
    with pytest.raises(MissingTokenizerError) as info:
        reg.load(LoadSpec("no tok", devices=("cpu",)))
    assert isinstance(info.value, BrokenModelError)
    assert str(folder) in str(info.value)
    assert all(f in str(info.value) for f in TOKENIZER_FILES)
    assert info.value.path == folder
    assert reg.list() == []
