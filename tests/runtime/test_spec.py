"""LoadSpec validation, progress, generation parameters, and the import rule."""

from __future__ import annotations

import sys

import pytest

from workbench.errors import ConfigError, LoadSpecError
from workbench.runtime import GenerationParams, LoadProgress, LoadSpec, tqdm_progress


def test_defaults_and_normalisation():
    spec = LoadSpec("m", devices=["CUDA", " cpu "]).validate()
    assert spec.devices == ("cuda:0", "cpu")
    assert LoadSpec("m", devices="cuda:1").devices == ("cuda:1",)
    assert LoadSpec("m").devices == ("cpu",)
    assert LoadSpec("m").device_type == "cpu"
    assert LoadSpec("m", devices=("cuda:0", "cpu")).device_type == "cuda"
    assert LoadSpec("m", quant="nf4", double_quant=True).precision == "nf4+dq"
    assert LoadSpec("m", max_memory={"CUDA": 5}, devices=("cuda:0",)).max_memory == {"cuda:0": 5}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"devices": ()}, "no device"),
        ({"devices": ("gpu0",)}, "'cpu' or 'cuda:N'"),
        ({"devices": ("cuda:0", "cuda:0")}, "twice"),
        ({"dtype": "float8"}, "bfloat16"),
        ({"quant": "int4"}, "nf4"),
        ({"quant": "int8", "double_quant": True}, "quant='nf4'"),
        ({"compute_dtype": "bfloat16"}, "4-bit"),
        ({"quant": "nf4", "compute_dtype": "float64"}, "compute_dtype"),
        ({"max_memory": {"cuda:1": 2**30}}, "not among the devices"),
        ({"max_memory": {"cpu": -1}}, "positive number of bytes"),
        ({"max_memory": {"cpu": "10GB"}}, "positive number of bytes"),
        ({"name": "two\nlines"}, "one-line name"),
    ],
)
def test_validation_says_what_to_change(kwargs, words):
    with pytest.raises(LoadSpecError) as err:
        LoadSpec("m", **kwargs).validate()
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


def test_empty_model_name():
    with pytest.raises(LoadSpecError, match="no model"):
        LoadSpec("  ").validate()


def test_spec_round_trips_to_dict():
    d = LoadSpec("m", devices=("cuda:0", "cuda:1"), quant="nf4", max_memory={"cuda:0": 1}).to_dict()
    assert d["devices"] == ["cuda:0", "cuda:1"]
    assert d["quant"] == "nf4"
    assert d["max_memory"] == {"cuda:0": 1}


def test_generation_params_validate():
    assert GenerationParams().validate().greedy is False
    assert GenerationParams(temperature=0).greedy
    assert GenerationParams(stop="###").stop == ("###",)
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2},
                {"repetition_penalty": 0}, {"stop": ("",)}):
        with pytest.raises(ConfigError):
            GenerationParams(**bad).validate()


def test_tqdm_progress_draws_and_closes(capsys):
    bar = tqdm_progress(desc="load", file=sys.stderr, disable=False)
    for p in (LoadProgress("check", 0.0, "checking"), LoadProgress("weights", 0.5, "weights 10/20"),
              LoadProgress("done", 1.0, "loaded")):
        bar(p)
    assert bar._bar is None  # closed at "done"
    assert "100%" in capsys.readouterr().err
    assert LoadProgress("weights", 0.5).percent_str == "50%"
