"""Folder names with spaces, accents and HTML characters work everywhere.

Safety comes from resolving a name inside its root with links followed, not from
a character whitelist: the traversal and link-out cases are refused here too.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.errors import UnsafeNameError
from workbench.store import ModelStore, check_name

ODD = ["my model", "Modèle été", "<b>&\"'x"]


@pytest.fixture
def odd_store(tiny_models, isolated_store: Path) -> Path:
    isolated_store.mkdir(parents=True, exist_ok=True)
    for name in ODD:
        shutil.copytree(tiny_models["llama"], isolated_store / name)
    return isolated_store


def test_listing_and_inspect_take_odd_names(odd_store, capsys):
    listed = {e.name: e for e in ModelStore().list()}
    assert set(ODD) <= set(listed)
    for name in ODD:
        assert listed[name].status == "ok", listed[name].problem
        assert ModelStore().get(name).path == odd_store / name
        assert main(["store", "inspect", name, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["name"] == name
        assert doc["status"] == "ok"
        assert doc["estimate"]
    assert main(["store", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert set(ODD) <= {item["name"] for item in json.loads(out)}


def test_a_name_in_another_unicode_form_finds_the_folder(odd_store):
    nfd = unicodedata.normalize("NFD", "Modèle été")
    assert nfd != "Modèle été"
    assert ModelStore().get(nfd).path == odd_store / "Modèle été"


def test_run_loads_and_generates_under_an_odd_name(odd_store, capsys):
    for name in ("my model", "<b>&\"'x"):
        code = main(["run", name, "--prompt", "Hello", "--max-new-tokens", "2", "--json"])
        doc = json.loads(capsys.readouterr().out)
        assert code == 0
        assert doc["new_tokens"] >= 1
        assert doc["footprint_bytes"] > 0


def test_panels_show_odd_names_escaped(odd_store, tiny_root, monkeypatch):
    from workbench.ui.store_panel import StorePanel, entries_table_html

    panel = StorePanel()
    html = entries_table_html(panel.entries)
    assert "&lt;b&gt;&amp;&quot;&#x27;x" in html
    assert "<b>&" not in html
    assert "Modèle été" in html
    assert "my model" in html
    entry = panel.select("<b>&\"'x")
    assert entry.status == "ok"
    details = panel.details_html()
    assert "&lt;b&gt;" in details
    assert "<b>&" not in details
    assert "Estimate" in details


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".", "", ".hidden", "/etc", "a\0b"])
def test_names_that_leave_the_root_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_name(name)


def test_a_link_out_of_the_root_is_unsafe_whatever_its_name(odd_store, tiny_models, tmp_path):
    os.symlink(tiny_models["llama"], odd_store / "lien vers <ailleurs>")
    entry = {e.name: e for e in ModelStore().list()}["lien vers <ailleurs>"]
    assert entry.status == "unsafe"
    assert "outside its store root" in entry.problem
    with pytest.raises(UnsafeNameError, match="outside its store root"):
        ModelStore().get("lien vers <ailleurs>")
