"""ImageGPTConfig: transformers' fields, defaults, aliases and config.json, both ways."""

from __future__ import annotations

import json

import pytest

from imagegpt import PRESETS, ImageGPTConfig, ImageGPTModel

FIELDS = [
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function", "resid_pdrop",
    "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range", "scale_attn_weights", "use_cache",
    "tie_word_embeddings", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
    "pad_token_id", "bos_token_id", "eos_token_id", "num_labels", "problem_type",
]  # fmt: skip


def test_defaults_match_transformers(transformers):
    ours, theirs = ImageGPTConfig(), transformers.ImageGPTConfig()
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id


def test_aliases_read_and_write():
    config = ImageGPTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=16)
    assert (config.n_embd, config.n_head, config.n_layer, config.n_positions) == (64, 4, 3, 16)
    config.hidden_size = 128
    assert config.n_embd == 128 and config.hidden_size == 128


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_the_released_sizes(name):
    config = ImageGPTConfig.preset(name)
    assert (config.n_embd, config.n_head, config.n_layer) == {
        "small": (512, 8, 24), "medium": (1024, 8, 36), "large": (1536, 16, 48)
    }[name]  # fmt: skip
    assert config.vocab_size == 513 and config.n_positions == 1024


def test_transformers_config_json_loads_and_ours_loads_in_transformers(transformers, tmp_path):
    theirs = transformers.ImageGPTConfig(n_embd=64, n_head=4, n_layer=3, id2label={0: "cat", 1: "dog", 2: "x"},
                                         activation_function="gelu", problem_type="single_label_classification")
    theirs.save_pretrained(tmp_path / "hf")
    ours = ImageGPTConfig.from_pretrained(tmp_path / "hf")
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.id2label == {0: "cat", 1: "dog", 2: "x"} and ours.label2id == {"cat": 0, "dog": 1, "x": 2}
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "imagegpt"
    back = transformers.ImageGPTConfig.from_pretrained(tmp_path / "ours")
    for name in FIELDS:
        assert getattr(back, name) == getattr(theirs, name), name
    assert back.id2label == theirs.id2label


def test_unknown_keys_round_trip_and_bookkeeping_dropped(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "imagegpt", "n_embd": 64, "n_head": 4, "custom_field": [1, 2],
         "architectures": ["ImageGPTForCausalImageModeling"], "transformers_version": "4.0.0"}))  # fmt: skip
    config = ImageGPTConfig.from_pretrained(tmp_path)
    assert config.custom_field == [1, 2]
    out = config.to_dict()
    assert out["custom_field"] == [1, 2] and "transformers_version" not in out
    assert out["architectures"] == ["ImageGPTForCausalImageModeling"]  # kept, as transformers
    assert ImageGPTConfig.from_dict(out) == config


def test_overrides_and_num_labels():
    config = ImageGPTConfig(num_labels=5)
    assert config.num_labels == 5 and config.id2label[4] == "LABEL_4"
    config.num_labels = 3
    assert len(config.label2id) == 3
    assert ImageGPTConfig.from_dict(config.to_dict(), n_layer=2).n_layer == 2
    assert config.start_token_id == 512 and config.inner_dim == 2048


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_layer=0), r"n_layer must be a positive integer, got 0"),
        (dict(n_head=-2), r"n_head must be a positive integer, got -2"),
        (dict(n_positions=2.5), r"n_positions must be a positive integer, got 2.5"),
        (dict(vocab_size=1), r"vocab_size must be >= 2"),
        (dict(activation_function="swishy"), r"activation_function 'swishy' is unknown"),
        (dict(resid_pdrop=1.5), r"resid_pdrop must be in \[0, 1\)"),
        (dict(n_inner=0), r"n_inner must be None or a positive integer"),
        (dict(problem_type="ranking"), r"problem_type must be one of"),
    ],
)
def test_invalid_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageGPTConfig(**kwargs)


def test_head_divisibility_checked_when_a_model_is_built():
    config = ImageGPTConfig(n_embd=30, n_head=8)  # accepted on its own, as transformers
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(8\)"):
        ImageGPTModel(config)


def test_wrong_model_type_and_unknown_preset():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        ImageGPTConfig.from_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ImageGPTConfig.preset("huge")
