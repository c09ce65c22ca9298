"""A panel holds its state once: its traits, each linked to its widget (``traitlets.link``).

Setting a trait moves its widget and a widget change sets the trait, for every control of the
Load, Prompt and Quantization panels; and a change of the Load panel's selection reads the
store no more (the listing read every entry once): counted at the store's one reading seam,
``Scanner.entry``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.ui import LoadPanel, PromptPanel, QuantizationPanel


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every store entry read from disk (``Scanner.entry``: header reads through the index cache)."""
    from workbench.store.scan import Scanner, entry_name

    calls: list[str] = []
    real = Scanner.entry

    def counting(self, path: Path):
        calls.append(entry_name(path))
        return real(self, path)

    monkeypatch.setattr(Scanner, "entry", counting)
    return calls


@pytest.fixture
def load_panel(tiny_store: Path):
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    panel = LoadPanel(registry=Registry(ModelStore()))
    panel.widget  # noqa: B018 (the live widgets)
    yield panel
    panel.close()


def test_load_panel_traits_move_the_widgets(load_panel: LoadPanel) -> None:
    c = load_panel.controls
    other = next(m for m in load_panel.models if m != load_panel.model)
    load_panel.model = other
    load_panel.dtype = "float32"
    load_panel.quant = "int8"
    load_panel.devices = []
    load_panel.budgets_gib = {"cpu": 2.5}
    assert (c.model.value, c.dtype.value, c.quant.value, c.devices["cpu"].value, c.budgets["cpu"].value) == (
        other, "float32", "int8", False, 2.5)


def test_load_panel_widgets_move_the_traits(load_panel: LoadPanel) -> None:
    c = load_panel.controls
    other = next(m for m in load_panel.models if m != load_panel.model)
    c.model.value = other
    c.dtype.value = "bfloat16"
    c.quant.value = "nf4"
    c.double_quant.value = True
    c.compute_dtype.value = "float16"
    c.devices["cpu"].value = False
    c.budgets["cpu"].value = 1.5
    assert (load_panel.model, load_panel.dtype, load_panel.quant, load_panel.double_quant,
            load_panel.compute_dtype, load_panel.devices, load_panel.budgets_gib) == (
        other, "bfloat16", "nf4", True, "float16", [], {"cpu": 1.5})
    c.devices["cpu"].value = True
    c.budgets["cpu"].value = 0.0
    assert (load_panel.devices, load_panel.budgets_gib) == (["cpu"], {})
    spec = load_panel.spec()
    assert (spec.model, spec.dtype, spec.quant, spec.double_quant, spec.compute_dtype) == (
        other, "bfloat16", "nf4", True, "float16")


def test_the_unknown_cache_opt_in_is_a_control_and_reaches_the_spec(load_panel: LoadPanel) -> None:
    c = load_panel.controls
    assert (load_panel.allow_unknown_cache, load_panel.spec().allow_unknown_cache) == (False, False)
    c.allow_unknown_cache.value = True
    assert (load_panel.allow_unknown_cache, load_panel.spec().allow_unknown_cache) == (True, True)
    load_panel.allow_unknown_cache = False
    assert c.allow_unknown_cache.value is False


def test_a_change_of_the_load_selection_reads_the_store_no_more(load_panel: LoadPanel, scans: list[str]) -> None:
    c = load_panel.controls
    other = next(m for m in load_panel.models if m != load_panel.model)
    for change in (lambda: setattr(c.model, "value", other), lambda: setattr(c.dtype, "value", "float32"),
                   lambda: setattr(c.quant, "value", "int8"), lambda: setattr(c.budgets["cpu"], "value", 3.0),
                   lambda: setattr(c.devices["cpu"], "value", False)):
        change()
    assert scans == []
    assert "no device chosen" in load_panel.outputs.check.value  # rendered after the last change
    load_panel.refresh_models()
    read_by_refresh = list(scans)
    listed = [e.name for e in load_panel.store.list()]  # every entry a listing reads, by the store itself
    assert sorted(read_by_refresh) == sorted(listed)  # refresh_models read each entry once, nothing more


def test_refreshing_the_models_keeps_the_selection_and_runs_no_model_change(load_panel: LoadPanel) -> None:
    # New options select their first one in ipywidgets: that must not pass through the model trait.
    seen: list[str] = []
    last = load_panel.models[-1]
    load_panel.model = last
    load_panel.observe(lambda change: seen.append(change["new"]), names="model")
    load_panel.refresh_models()
    assert (load_panel.model, load_panel.controls.model.value, seen) == (last, last, [])


def test_prompt_panel_traits_and_widgets_are_one(tmp_path: Path) -> None:
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    panel = PromptPanel(Registry(ModelStore([tmp_path / "empty"], cache_path=None)))
    try:
        c = panel.controls
        panel.set_params(temperature=0.3, top_k=7, seed=5, stop=["###"], enable_thinking=False)
        panel.system_prompt = "Be brief."
        assert (c.params["temperature"].value, c.params["top_k"].value, c.seed.value, c.stop_at.value,
                c.thinking.value, c.system_prompt.value) == (0.3, 7, "5", "###", False, "Be brief.")
        c.params["max_new_tokens"].value = 9
        c.params["top_p"].value = 0.5
        c.params["repetition_penalty"].value = 1.3
        c.seed.value = ""
        c.stop_at.value = "a, b"
        c.thinking.value = True
        c.system_prompt.value = "Be kind."
        p = panel.generation_params()
        assert (p.max_new_tokens, p.top_p, p.repetition_penalty, p.seed, p.stop, p.enable_thinking,
                p.system_prompt) == (9, 0.5, 1.3, None, ("a", "b"), True, "Be kind.")
        c.seed.value = "twelve"
        assert (panel.seed, panel.message[1]) == (None, "error")
        assert "'twelve' is not a whole number" in panel.message[0]
    finally:
        panel.close()


def test_quantization_panel_traits_and_widgets_are_one(tiny_store: Path) -> None:
    panel = QuantizationPanel()
    try:
        c = panel.controls
        other = next(m for m in panel.models if m != panel.model)
        panel.model = other
        panel.variants = ["float32", "int8"]
        panel.eval_tokens = 128
        assert (c.model.value, c.variants["float32"].value, c.variants["int8"].value,
                c.variants["bfloat16"].value, c.eval_tokens.value) == (other, True, True, False, 128)
        c.variants["nf4"].value = True
        c.variants["float32"].value = False
        c.eval_tokens.value = 256
        assert (panel.variants, panel.eval_tokens) == (["int8", "nf4"], 256)
    finally:
        panel.close()


def test_the_quantization_panels_unknown_cache_opt_in_is_a_control_and_reaches_the_study(tiny_store: Path) -> None:
    """The box is the trait; a study of a model whose cache the store cannot measure (tiny_models'
    recurrent_gemma) is refused row by row until it is ticked."""
    from tiny_models import build_unknown_cache_model

    build_unknown_cache_model(tiny_store / "tiny-recurrent")
    panel = QuantizationPanel()
    try:
        c = panel.controls
        assert (panel.allow_unknown_cache, c.allow_unknown_cache.value) == (False, False)
        args = dict(eval_tokens=32, new_tokens=4, prompts=("Hello",), kl_tokens=8)
        (refused,) = panel.run("tiny-recurrent", ["bfloat16"], "cpu", **args).rows
        assert "KV cache unknown" in refused.error
        c.allow_unknown_cache.value = True
        assert panel.allow_unknown_cache is True
        (row,) = panel.run("tiny-recurrent", ["bfloat16"], "cpu", **args).rows
        assert row.ok, row.error
        panel.allow_unknown_cache = False
        assert c.allow_unknown_cache.value is False
    finally:
        panel.close()
