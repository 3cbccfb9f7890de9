import dataclasses

import pytest

from llmdual.core.config import PRESETS, Config


def test_presets_validate_and_match_their_definitions():
    for name, fields in PRESETS.items():
        config = Config.preset(name)
        for key, value in fields.items():
            assert getattr(config, key) == value
        assert config.d_ff == fields.get("d_ff", 4 * config.d_model)


def test_small_and_gpt2_presets_have_the_documented_sizes():
    small = Config.preset("small")
    assert (small.vocab_size, small.max_seq_len, small.d_model, small.n_layers, small.n_heads) == (8192, 256, 256, 4, 4)
    gpt2 = Config.preset("gpt2")
    assert (gpt2.vocab_size, gpt2.max_seq_len, gpt2.d_model, gpt2.n_layers, gpt2.n_heads) == (50257, 1024, 768, 12, 12)


def test_json_round_trip(tmp_path):
    config = Config.preset("tiny", dropout=0.1, tie_embeddings=False, num_classes=5)
    assert Config.from_json(config.to_json()) == config
    config.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == config


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config.preset("tiny").d_model = 3


@pytest.mark.parametrize(
    "change, words",
    [
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"vocab_size": -3}, "vocab_size must be a positive integer"),
        ({"n_layers": 2.5}, "n_layers must be a positive integer"),
        ({"d_model": 66}, "divisible by n_heads"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"dropout": -0.1}, "dropout must be in [0, 1)"),
        ({"norm_eps": 0}, "norm_eps must be a finite positive number"),
        ({"norm_eps": float("inf")}, "norm_eps must be a finite positive number, got inf"),
        ({"n_heads": True}, "n_heads must be a positive integer (not a bool or float), got True"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"tie_embeddings": "yes"}, "tie_embeddings must be a bool"),
    ],
)
def test_bad_values_raise_naming_the_field(change, words):
    with pytest.raises(ValueError) as err:
        Config.preset("tiny", **change)
    assert words in str(err.value)


def test_unknown_preset_and_fields_are_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        Config.preset("huge")
    with pytest.raises(ValueError, match="unknown Config fields \\['n_embd'\\]"):
        Config.from_dict({**Config.preset("tiny").to_dict(), "n_embd": 4})
