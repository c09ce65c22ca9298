"""A load refused for a broken entry names the listing's own problem, not a symptom beside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workbench.errors import BrokenModelError, MissingTokenizerError
from workbench.store import ModelStore
from workbench.store.safety import check_entry


def test_empty_folder_is_refused_for_what_the_listing_says(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    entry = ModelStore([tmp_path], cache_path=None).get("empty-model")
    assert entry.status == "broken"
    with pytest.raises(BrokenModelError) as err:
        check_entry(entry)
    assert not isinstance(err.value, MissingTokenizerError)
    assert entry.problem in str(err.value)


def test_no_tokenizer_is_refused_naming_the_files(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "no-tok")
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    entry = ModelStore([tmp_path], cache_path=None).get("no-tok")
    with pytest.raises(MissingTokenizerError, match="tokenizer.json"):
        check_entry(entry)
