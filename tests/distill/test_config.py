"""d3hf.distill.config: settings sections, flat keys, and a decoder spec written in YAML."""

import pytest

from d3hf import ConfigError, DistillArguments
from d3hf.commands.distill import parse_distill_args
from d3hf.distill.budget import BudgetError
from d3hf.distill.config import SECTION_OF_KEY, SECTIONS
from d3hf.distill.runner import build_config
from d3hf.modeling.decoders import DecoderSpec
from tests.helpers import tiny_args, write_config


def test_flat_keys_land_in_their_sections_and_round_trip():
    args = DistillArguments(dataset="digits", syn_steps=4, seed=3, eval_seeds=2)
    assert (args.data.dataset, args.matching.syn_steps, args.run.seed, args.evaluation.eval_seeds) == ("digits", 4, 3, 2)
    assert DistillArguments(**args.to_dict()) == args
    assert args.replace(syn_steps=5).matching.syn_steps == 5 and args.matching.syn_steps == 4
    assert set(SECTION_OF_KEY) == set(args.to_dict()) and len(SECTION_OF_KEY) == sum(
        len(cls.__dataclass_fields__) for cls in SECTIONS.values())  # every key in exactly one section
    with pytest.raises(ConfigError, match="did you mean syn_steps"):
        DistillArguments(syn_stepz=4)


def test_a_decoder_spec_written_as_yaml_is_the_artifact_decoder(tmp_path, digits):
    recipe = tmp_path / "cfg.yaml"
    spec = {"channels": [8, 4], "start_hw": [4, 4], "upsample": "transpose4", "output": "tanh"}
    args = parse_distill_args([write_config(recipe, tmp_path / "out", z_dim=6, decoder=spec)])
    assert args.representation.decoder_value() == spec
    config = build_config(args, digits)
    expected = DecoderSpec(z_dim=6, out_shape=[1, 8, 8], **spec)
    assert config.decoder_specs()[0] == expected and config.z_dim == 6
    # The same spec from the command line.
    flag = parse_distill_args([str(recipe), "--decoder", "{channels: [8, 4], start_hw: [4, 4], upsample: transpose4, "
                               "output: tanh}"])
    assert flag.representation.decoder_value() == spec


def test_the_official_small_decoder_is_expressible_and_counts_as_the_reference():
    # The reference code's TinyVAE decoder with kernel_num 128, z 64 at 32x32x3: 210,227 parameters.
    spec = DecoderSpec(z_dim=64, out_shape=[3, 32, 32], channels=[128, 64, 32, 16, 16], start_hw=[2, 2],
                       upsample="transpose4", output="tanh")
    assert spec.num_parameters() == 210_227


def test_a_bad_decoder_spec_is_refused_before_any_work(digits):
    with pytest.raises(ConfigError, match="unknown spec field"):
        tiny_args(decoder="{channels: [8], widht: 3}")
    with pytest.raises(ConfigError, match="YAML mapping"):
        tiny_args(decoder="{channels: [8")
    with pytest.raises(BudgetError, match="images; the data is"):
        build_config(tiny_args(decoder="{channels: [8, 4], start_hw: [4, 4], out_shape: [1, 16, 16]}"), digits)
