"""Any folder name works in the store (README, Safety), but an endpoint name is narrower: serving a
model whose name cannot name an endpoint says to pass one, before any slow work."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError, MissingTokenizerError
from workbench.serve.launch import plan_serve
from workbench.store.tokenizer_files import require_tokenizer


def _model(root, name):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_a_model_name_that_cannot_name_an_endpoint_asks_for_one(isolated_store) -> None:
    _model(isolated_store, "Modèle <b> x")
    with pytest.raises(ConfigError) as info:
        plan_serve("Modèle <b> x", engine="transformers")
    assert "'Modèle <b> x' cannot name an endpoint" in str(info.value)
    assert "--name" in str(info.value)


def test_an_explicit_bad_name_is_refused_as_such(isolated_store) -> None:
    _model(isolated_store, "plain")
    with pytest.raises(ConfigError, match="endpoint name 'a b' is not usable"):
        plan_serve("plain", engine="transformers", name="a b")


def test_the_missing_tokenizer_error_says_what_to_do_once(tmp_path) -> None:
    with pytest.raises(MissingTokenizerError) as info:
        require_tokenizer(tmp_path, "m")
    assert str(info.value).count("copy") == 1
