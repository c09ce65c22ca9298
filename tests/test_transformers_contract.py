"""One test per bet the workbench makes on transformers' internals (workbench/_transformers_compat.py).

When a transformers upgrade breaks one of these, this file names the bet that no
longer holds; the loads themselves would otherwise fail (or lose their progress bar)
far from the cause.
"""

from __future__ import annotations

import logging
import traceback

import pytest

from workbench import _transformers_compat as compat


def test_the_tqdm_hook_is_set_through_set_tqdm_hook_and_kept_in_the_private_attribute():
    from transformers.utils import logging as hf_logging

    assert compat.install_tqdm_hook() is True
    assert getattr(hf_logging, compat.HOOK_ATTRIBUTE) is compat._tqdm_hook
    # transformers' tqdm calls the hook with (factory, args, kwargs): a bar we don't own goes to the factory.
    bar = hf_logging.tqdm(range(3), desc="something else", disable=True)
    assert list(bar) == [0, 1, 2]


def test_the_weights_loop_is_the_bar_described_loading_weights(tiny_models):
    """A real load through from_pretrained: every tensor read passes through our stand-in bar."""
    from transformers import AutoModelForCausalLM

    class Count:
        total = steps = 0

        def start(self, total):
            self.total = total

        def step(self):
            self.steps += 1

    observer = Count()
    assert compat.install_tqdm_hook()
    with compat.observing_weights(observer):
        model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], local_files_only=True)
    n_tensors = len({name for name, _ in model.state_dict().items()} - {"lm_head.weight"})  # tied
    assert observer.total > 0
    assert observer.steps == observer.total
    assert observer.total <= n_tensors


def test_conversion_errors_are_raised_from_a_frame_holding_loading_info():
    """transformers 5 logs per-tensor conversion errors in ``loading_info.conversion_errors`` and raises a
    bare RuntimeError from a frame whose local ``loading_info`` holds them: the real error is recovered."""
    import torch
    from transformers.utils.loading_report import LoadStateDictInfo, log_state_dict_report

    try:
        raise NotImplementedError("fp4 is not supported on cpu")
    except NotImplementedError as inner:
        text = "".join(traceback.format_exception(inner)) + "\nError: on tensors destined for [x]. Ckpt contains: 1"
    info = LoadStateDictInfo(missing_keys=set(), unexpected_keys=set(), mismatched_keys=set(), error_msgs=[],
                             conversion_errors={"model.layers.0.mlp.up_proj.weight": text}, skipped_pp_keys=set())
    quiet = logging.getLogger("contract-test")
    quiet.disabled = True
    with pytest.raises(RuntimeError) as raised:
        log_state_dict_report(torch.nn.Linear(1, 1), "tiny", False, info, logger=quiet)
    assert compat.conversion_error(raised.value) == ("NotImplementedError", "fp4 is not supported on cpu")


def test_conversion_error_is_none_for_other_failures():
    try:
        raise RuntimeError("out of memory")
    except RuntimeError as exc:
        assert compat.conversion_error(exc) is None


def test_the_gguf_reader_loops_over_a_module_level_tqdm_that_can_be_switched():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    assert callable(original)
    with compat.library_progress_bars_off():
        assert gguf_utils.tqdm is hf_logging.tqdm
        assert not hf_logging.is_progress_bar_enabled()
    assert gguf_utils.tqdm is original


def _meta_model(tiny_models, arch):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_models[arch], local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_quantizers_skip_the_head_and_named_modules(tiny_models):
    """By default the bnb integration leaves the output head unquantized; ``llm_int8_skip_modules``, when
    given, names what stays instead. Everything else is converted."""
    model = _meta_model(tiny_models, "mistral")  # untied head
    default = compat.modules_not_to_convert(model, None)
    assert not compat.should_convert_module("lm_head", default)
    assert compat.should_convert_module("model.layers.0.mlp.down_proj", default)
    named = compat.modules_not_to_convert(model, ["mlp.down_proj"])
    assert not compat.should_convert_module("model.layers.0.mlp.down_proj", named)
    assert compat.should_convert_module("model.layers.0.self_attn.q_proj", named)


def test_the_dtype_plan_names_the_parameters_kept_in_float32(tiny_models):
    """``_get_dtype_plan`` + ``build_glob_alternation``: a model with ``_keep_in_fp32_modules_strict`` has a
    matcher for it; one without keeps nothing (``None``)."""
    model = _meta_model(tiny_models, "llama")
    assert set(compat.fp32_matchers(model)) == {"float16", "bfloat16"}
    model._keep_in_fp32_modules_strict = ["mlp.up_proj"]
    matchers = compat.fp32_matchers(model)
    assert matchers["bfloat16"] is not None
    assert matchers["bfloat16"].search("model.layers.1.mlp.up_proj.weight")
    assert not matchers["bfloat16"].search("model.layers.1.mlp.down_proj.weight")


def test_apply_chat_template_renders_through_render_jinja_template_with_the_special_tokens(tiny_models):
    """The bounded renderer calls render_jinja_template with special_tokens_map as variables: exactly
    what apply_chat_template(tokenize=False) returns."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    chat = [{"role": "user", "content": "Hi"}]
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
    tok.chat_template = template
    ours = compat.render_jinja_template([chat], chat_template=template, add_generation_prompt=True,
                                        **tok.special_tokens_map)
    assert ours == [tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)]


def test_transformers_serve_builds_its_app_through_the_server_modules_build_server(tmp_path, monkeypatch):
    """The launcher's key check rides on Serve() calling transformers.cli.serving.server.build_server when
    it runs: a Serve built after wrap_serve_app answers 401 without the key and /health with none."""
    import urllib.error
    import urllib.request

    from transformers.cli.serve import Serve
    from transformers.cli.serving import server

    from workbench.serve.auth import BearerKeyMiddleware
    from workbench.serve.process import free_port

    monkeypatch.setattr(server, "build_server", server.build_server)  # restored after the test
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    compat.wrap_serve_app(lambda app: app.add_middleware(BearerKeyMiddleware, key="k3y"))
    port = free_port()
    serve = Serve(host="127.0.0.1", port=port, non_blocking=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                import time

                time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/v1/models", timeout=5)
        assert info.value.code == 401
        req = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer k3y"})
        assert urllib.request.urlopen(req, timeout=5).status == 200
    finally:
        serve.kill_server()


def test_the_auto_tables_read_from_source_are_the_imported_auto_classes_mappings():
    """store/support.py reads modeling_auto.py's tables without importing it (that imports torch): what it
    reads must be what each imported auto class maps, for every class it reads, the needed ones included."""
    from transformers.models.auto import modeling_auto

    read = compat.auto_mapping_names()
    assert set(compat.NEEDED_AUTO_CLASSES) <= set(read)
    for cls_name, table in read.items():
        names = getattr(modeling_auto, cls_name)._model_mapping._model_mapping
        assert table == {k: compat._names(v) for k, v in names.items()}, cls_name
    assert compat._imported_auto_mapping_names()["AutoModelForCausalLM"] == read["AutoModelForCausalLM"]
    # A source of another shape falls back to the imported module, never to an empty verdict.
    assert compat.auto_mapping_names("x = 1\n") == compat._imported_auto_mapping_names()


def test_the_loading_report_on_a_meta_skeleton_is_what_from_pretrained_reports(tiny_models, tmp_path):
    """store/coverage.py's bet: from_pretrained's own matching calls (conversion mapping, convert_and_load_state_dict_in_model,
    tie_weights with the missing keys, _adjust_missing_and_unexpected_keys), run on a meta skeleton with meta tensors of
    the checkpoint's shapes, report the missing, unexpected and mismatched keys a real load reports."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_models["mistral"], folder)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.0.mlp.down_proj.weight"]
    state["model.layers.1.input_layernorm.weight"] = torch.zeros(32)
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    _model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
    report = compat.loading_report(_meta_model({"m": folder}, "m"), {k: tuple(v.shape) for k, v in state.items()})
    assert set(report.missing) == info["missing_keys"] == {"model.layers.0.mlp.down_proj.weight"}
    assert set(report.unexpected) == info["unexpected_keys"] == {"model.layers.0.mlp.extra.weight"}
    assert {(k, tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"]} == set(report.mismatched)
    assert [k for k, _a, _b in report.mismatched] == ["model.layers.1.input_layernorm.weight"]
    assert report.unconvertible == ()


def test_a_forward_pass_returns_its_cache_under_one_of_the_names_generate_reads(tiny_models):
    """store/kv_cache.py and the family sweep read a forward pass's cache where ``generate()`` reads it: under
    ``transformers.generation.utils.ALL_CACHE_NAMES`` (a ``Cache`` as ``cache``; RWKV's list of states as
    ``state``); a pass without a cache gives ``None``."""
    import torch
    from transformers import AutoModelForCausalLM, RwkvConfig
    from transformers.cache_utils import Cache
    from transformers.generation.utils import ALL_CACHE_NAMES

    assert set(ALL_CACHE_NAMES) <= set(compat.cache_output_names())
    ids = torch.tensor([[1, 2, 3]])
    llama = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], local_files_only=True)
    with torch.no_grad():
        out = llama(input_ids=ids, use_cache=True)
        assert compat.cache_output(llama(input_ids=ids, use_cache=False)) is None
    assert isinstance(compat.cache_output(out), Cache)
    assert compat.cache_output(out) is out["cache"]
    rwkv = AutoModelForCausalLM.from_config(RwkvConfig(vocab_size=64, hidden_size=32, attention_hidden_size=32,
                                                       intermediate_size=64, num_hidden_layers=2, context_length=16))
    with torch.no_grad():
        out = rwkv(input_ids=ids, use_cache=True)
    state = compat.cache_output(out)
    assert state is out.state
    assert len(state) == 5 and all(isinstance(t, torch.Tensor) for t in state)
