"""Tokenizer presence and chat-template sources, checked against what transformers itself reads.

Truth: ``AutoTokenizer.from_pretrained`` (loads or refuses; the ``chat_template``
it ends up with), and for the processor-only ``chat_template.json`` the file's own
content. The listing must report exactly that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench.store import ModelStore
from workbench.store.tokenizer_files import TOKENIZER_FILES, find_chat_template

MARK = "{% for m in messages %}[[{name}]]{{{{ m['content'] }}}}{% endfor %}{% if add_generation_prompt %}<go>{% endif %}"


def tmpl(name: str) -> str:
    return MARK.replace("{name}", name).replace("{{{{", "{{").replace("}}}}", "}}")


def strip_templates(folder: Path) -> Path:
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def _config_with(folder: Path, value) -> None:
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


# Each layout: how to write it, the source the store must report.
LAYOUTS = {
    "jinja": (lambda f: (f / "chat_template.jinja").write_text(tmpl("jinja")), "chat_template.jinja"),
    "config-string": (lambda f: _config_with(f, tmpl("config")), "tokenizer_config.json"),
    "config-list": (lambda f: _config_with(f, [{"name": "default", "template": tmpl("config-default")},
                                               {"name": "tool_use", "template": tmpl("config-tools")}]),
                    "tokenizer_config.json"),
    "jinja-and-extra-dir": (lambda f: ((f / "chat_template.jinja").write_text(tmpl("jinja-main")),
                                       (f / "additional_chat_templates").mkdir(),
                                       (f / "additional_chat_templates" / "rag.jinja").write_text(tmpl("rag"))),
                            "chat_template.jinja"),
    "jinja-overrides-config": (lambda f: (_config_with(f, tmpl("loser")),
                                          (f / "chat_template.jinja").write_text(tmpl("winner"))),
                               "chat_template.jinja"),
    "extra-dir-only": (lambda f: ((f / "additional_chat_templates").mkdir(),
                                  (f / "additional_chat_templates" / "default.jinja").write_text(tmpl("dir-default"))),
                       "additional_chat_templates/"),
}


def make(tiny_models, root: Path, layout: str) -> Path:
    folder = strip_templates(shutil.copytree(tiny_models["llama"], root / f"t-{layout}"))
    LAYOUTS[layout][0](folder)
    return folder


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_store_reports_the_template_transformers_reads(tiny_models, tmp_path, layout):
    from transformers import AutoTokenizer

    folder = make(tiny_models, tmp_path, layout)
    truth = AutoTokenizer.from_pretrained(folder).chat_template
    found = find_chat_template(folder)
    assert found is not None
    assert found.source == LAYOUTS[layout][1]
    assert (found.templates if isinstance(truth, dict) else found.template) == truth
    entry = ModelStore([tmp_path], cache_path=None).get(folder.name)
    assert entry.has_chat_template
    assert entry.chat_template_source == LAYOUTS[layout][1]


def test_processor_style_chat_template_json(tiny_models, tmp_path):
    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "proc"))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": tmpl("processor")}))
    found = find_chat_template(folder)
    assert found.source == "chat_template.json"
    assert found.template == json.loads((folder / "chat_template.json").read_text())["chat_template"]
    entry = ModelStore([tmp_path], cache_path=None).get("proc")
    assert entry.has_chat_template
    assert entry.chat_template_source == "chat_template.json"


def test_named_templates_without_default_are_not_a_usable_template(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "nodefault"))
    _config_with(folder, [{"name": "tool_use", "template": tmpl("tools")}])
    tok = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="no default"):
        tok.get_chat_template()  # transformers refuses to pick one, so the store has no template to apply
    found = find_chat_template(folder)
    assert found.names == ("tool_use",)
    assert found.template is None
    assert not ModelStore([tmp_path], cache_path=None).get("nodefault").has_chat_template


def test_no_template_anywhere(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "plain"))
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    assert find_chat_template(folder) is None
    entry = ModelStore([tmp_path], cache_path=None).get("plain")
    assert not entry.has_chat_template
    assert entry.chat_template_source is None
    assert entry.status == "ok"


def test_folder_without_tokenizer_is_listed_so(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "no tok")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(Exception):  # noqa: B017 - transformers' own verdict: it cannot build one
        AutoTokenizer.from_pretrained(folder)
    entry = ModelStore([tmp_path], cache_path=None).get("no tok")
    assert not entry.has_tokenizer
    assert entry.status == "broken"
    assert "no tokenizer" in entry.problem
    assert str(folder) in entry.problem
    assert "tokenizer.json" in entry.problem
    assert entry.params
    assert entry.dtype  # the weights were still read
    full = ModelStore([tiny_models["llama"].parent], cache_path=None).get("tiny-llama")
    assert full.has_tokenizer
    assert full.status == "ok"
    AutoTokenizer.from_pretrained(full.path)  # and transformers agrees it has one
    assert set(TOKENIZER_FILES) >= {"tokenizer.json", "tokenizer.model", "vocab.json"}


def test_store_panel_details_name_the_template_source_and_missing_tokenizer(tiny_models, tmp_path):
    from workbench.ui.store_panel import entry_details_html

    folder = strip_templates(shutil.copytree(tiny_models["llama"], tmp_path / "proc"))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": tmpl("processor")}))
    (folder / "tokenizer.json").unlink()
    html = entry_details_html(ModelStore([tmp_path], cache_path=None).get("proc"))
    assert "yes (chat_template.json)" in html
    assert "no tokenizer in" in html
