"""A checkpoint's tensors must cover the model (workbench/store/coverage.py).

Every right value is transformers' own: ``from_pretrained(..., output_loading_info=True)`` on the
same files says which keys are missing, unexpected and mismatched; the store must say the same
from the headers and the meta-device skeleton, list the checkpoint ``broken`` naming them, and a
load must refuse it before reading a weight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny_models import build_from_config, build_tiny
from workbench.errors import BrokenModelError
from workbench.store import ModelStore
from workbench.store.coverage import checked, checkpoint_shapes, coverage_problem, verified
from workbench.store.coverage_report import NAMED


def _state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _save(folder: Path, state: dict) -> None:
    from safetensors.torch import save_file

    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _damage(folder: Path, how: str) -> None:
    import torch

    state = _state(folder)
    if how == "removed":
        del state["model.layers.1.mlp.up_proj.weight"]
    elif how == "wrong shape":
        state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 32)
    elif how == "extra":
        state["model.layers.0.mlp.surplus.weight"] = torch.zeros(4, 4)
        state["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(64, 64)
    _save(folder, state)


def _transformers_report(folder: Path, auto: str = "AutoModelForCausalLM") -> dict:
    """What transformers itself reports loading ``folder`` (the right value)."""
    import transformers

    _model, info = getattr(transformers, auto).from_pretrained(
        folder, output_loading_info=True, ignore_mismatched_sizes=True, local_files_only=True)
    return {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            "mismatched": sorted((k, tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"])}


def _entry(folder: Path):
    return ModelStore([folder.parent], cache_path=None).get(folder.name)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_a_checkpoint_transformers_saved_covers_its_model(tmp_path, arch):
    folder = build_tiny(arch, tmp_path / f"tiny-{arch}")
    assert _transformers_report(folder) == {"missing": [], "unexpected": [], "mismatched": []}
    entry = _entry(folder)
    assert checked(entry)
    assert coverage_problem(entry) is None
    assert verified(entry).status == "ok"


@pytest.mark.parametrize("how", ["removed", "wrong shape", "extra"])
def test_a_damaged_checkpoint_is_broken_naming_what_transformers_names(tmp_path, how):
    folder = build_tiny("llama", tmp_path / "tiny-llama")
    _damage(folder, how)
    truth = _transformers_report(folder)
    faults = truth["missing"] + [k for k, _a, _b in truth["mismatched"]] + truth["unexpected"]
    assert faults, truth  # transformers itself sees the damage

    entry = _entry(folder)
    assert entry.status == "ok"  # headers alone cannot tell: nothing was computed yet
    problem = coverage_problem(entry)
    assert problem is not None
    for name in faults[:NAMED]:
        assert name in problem, (name, problem)
    assert "re-download" in problem
    if truth["mismatched"]:
        _name, ckpt, model = truth["mismatched"][0]
        assert f"{list(ckpt)} (the model's is {list(model)})" in problem
    assert verified(entry).status == "broken"
    # The verdict is kept: the listing now says so too, without building anything.
    listed = {e.name: e for e in ModelStore([tmp_path], cache_path=None).list()}["tiny-llama"]
    assert (listed.status, listed.problem) == ("broken", problem)


def test_the_report_is_transformers_own_for_every_fault_at_once(tmp_path):
    """Missing, mismatched and unexpected together, against from_pretrained's loading info key by key."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench._transformers_compat import loading_report

    folder = build_tiny("mistral", tmp_path / "tiny-mistral")
    state = _state(folder)
    del state["lm_head.weight"], state["model.norm.weight"]
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    state["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # old checkpoints: ignored
    state["model.extra.weight"] = torch.zeros(2)
    _save(folder, state)
    truth = _transformers_report(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    report = loading_report(model, checkpoint_shapes(_entry(folder)).shapes)
    assert {"missing": list(report.missing), "unexpected": list(report.unexpected),
            "mismatched": list(report.mismatched)} == truth
    assert truth["missing"] == ["lm_head.weight", "model.norm.weight"]
    assert truth["unexpected"] == ["model.extra.weight"]


def test_a_checkpoint_of_the_base_model_covers_the_causal_lm(tmp_path):
    """Saved from LlamaModel (no ``model.`` prefix, no head: tied): transformers adds the prefix and ties the head."""
    import torch
    from transformers import AutoModel

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    base = AutoModel.from_pretrained(folder, dtype=torch.float32)
    (folder / "model.safetensors").unlink()
    base.save_pretrained(tmp_path / "base")
    shutil.copy(tmp_path / "base" / "model.safetensors", folder / "model.safetensors")
    assert not any(k.startswith("model.") for k in _state(folder))
    assert _transformers_report(folder) == {"missing": [], "unexpected": [], "mismatched": []}
    assert coverage_problem(_entry(folder)) is None


def test_fused_experts_are_matched_through_transformers_conversion(tmp_path):
    """Mixtral's per-expert tensors on disk become fused 3-D parameters: covered when whole; an expert
    removed is a fault wherever transformers reports one."""
    folder = build_from_config("MixtralConfig", dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=4, num_key_value_heads=2,
                                                     num_local_experts=4, num_experts_per_tok=2),
                               tmp_path / "tiny-mixtral")
    entry = _entry(folder)
    assert any(".experts.3." in k for k in checkpoint_shapes(entry).shapes)  # stored per expert
    assert _transformers_report(folder) == {"missing": [], "unexpected": [], "mismatched": []}
    assert coverage_problem(entry) is None


def test_a_load_refuses_a_broken_checkpoint_before_reading_weights(tmp_path, monkeypatch):
    from workbench.runtime import LoadSpec, Registry, loader

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    _damage(folder, "removed")
    monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("the weights were read"))
    with pytest.raises(BrokenModelError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as raised:
        Registry(ModelStore([tmp_path], cache_path=None)).load(LoadSpec("tiny-llama", devices=("cpu",)))
    assert "randomly initialised" in str(raised.value)
    assert "re-download" in (raised.value.hint or "")


def test_workbench_run_refuses_it_naming_the_tensor(tmp_path, monkeypatch, capsys):
    from workbench import cli
    from workbench.runtime import loader

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    _damage(folder, "wrong shape")
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path))
    monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("the weights were read"))
    assert cli.main(["run", "tiny-llama", "--prompt", "hi", "--json"]) != 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "BrokenModelError"
    assert "model.layers.0.self_attn.o_proj.weight" in doc["message"]


def test_inspect_lists_it_broken(tmp_path, monkeypatch, capsys):
    from workbench import cli

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    _damage(folder, "extra")
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path))
    assert cli.main(["store", "inspect", "tiny-llama", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "broken"
    assert "model.layers.0.mlp.surplus.weight" in doc["problem"]
    assert cli.main(["store", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    items = listed if isinstance(listed, list) else listed.get("models", listed.get("entries"))
    assert [e["status"] for e in items if e["name"] == "tiny-llama"] == ["broken"]


def test_one_skeleton_build_answers_the_estimate_and_the_coverage(tmp_path, monkeypatch):
    from workbench.store import estimate, layout

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    builds = []
    real = layout._meta_skeleton
    monkeypatch.setattr(layout, "_meta_skeleton", lambda *a: builds.append(a) or real(*a))
    entry = _entry(folder)
    estimate(entry, "bfloat16")
    assert coverage_problem(entry) is None
    assert len(builds) == 1


def test_pre_quantized_checkpoints_are_not_checked(tmp_path, tiny_models):
    """Packed weights and quantization state map onto modules the quantizer builds, not the skeleton's."""
    from tiny_models import save_prequantized

    folder = save_prequantized(tiny_models["llama"], tmp_path / "tiny-nf4", "nf4")
    entry = _entry(folder)
    assert entry.status == "ok", entry.problem
    assert not checked(entry)
    assert coverage_problem(entry) is None


def test_vision_language_checkpoints_cover_their_models(vlm_root):
    for name in ("tiny-llava", "tiny-qwen2-vl", "tiny-gemma3"):
        folder = vlm_root / name
        assert _transformers_report(folder, "AutoModelForImageTextToText") == {
            "missing": [], "unexpected": [], "mismatched": []}, name
        entry = ModelStore([vlm_root], cache_path=None).get(name)
        assert coverage_problem(entry) is None, name


def test_when_transformers_cannot_match_the_tensors_the_estimate_stands_and_nothing_is_refused(tmp_path, monkeypatch):
    from workbench.store import estimate, layout

    folder = build_tiny("llama", tmp_path / "tiny-llama")
    monkeypatch.setattr(layout, "loading_report", lambda model, shapes: (_ for _ in ()).throw(RuntimeError("no")))
    entry = _entry(folder)
    assert estimate(entry, "bfloat16").weights_bytes > 0
    assert coverage_problem(entry) is None
    assert verified(entry).status == "ok"
