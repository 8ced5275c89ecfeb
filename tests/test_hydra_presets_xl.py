"""Hydra YAML presets of ``transformer_xl_mswa`` (configs/model/transformer_xl_mswa*.yaml) match the
``register_model_architecture`` preset functions fairseq-train uses (fairseq-hydra-train ignores
those functions, so the YAML config groups are its only way to get the presets)."""

import argparse
from pathlib import Path

import pytest
import torch
from conftest import make_dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from omegaconf import OmegaConf

from fairseq_mswa.models import transformer_xl_mswa as xl
from fairseq_mswa.models.transformer_xl_mswa import (
    TransformerXLMSWAConfig,
    TransformerXLMSWALanguageModel,
)

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "transformer_xl_mswa": xl.transformer_xl_mswa,
    "transformer_xl_mswa_wt103": xl.transformer_xl_mswa_wt103,
    "transformer_xl_mswa_enwik8": xl.transformer_xl_mswa_enwik8,
    "transformer_xl_mswa_tiny": xl.transformer_xl_mswa_tiny,
}


def preset_values(arch: str) -> dict:
    """What the preset function sets on an empty namespace (= fairseq-train --arch arch)."""
    args = argparse.Namespace()
    PRESETS[arch](args)
    return vars(args)


def load_yaml(arch: str):
    path = REPO / "configs" / "model" / f"{arch}.yaml"
    assert path.read_text().startswith("# @package _group_\n"), f"{path.name}: first line must be the package"
    return OmegaConf.load(path)


def test_every_preset_is_an_architecture():
    for arch in PRESETS:
        assert ARCH_MODEL_REGISTRY[arch] is TransformerXLMSWALanguageModel
    for arch in set(PRESETS) - {"transformer_xl_mswa"}:
        assert ARCH_CONFIG_REGISTRY[arch] is PRESETS[arch]


@pytest.mark.parametrize("arch", list(PRESETS))
def test_yaml_equals_preset(arch):
    yaml_cfg = load_yaml(arch)
    assert yaml_cfg.pop("_name") == "transformer_xl_mswa"
    expected = preset_values(arch)
    # the same keys: every field the preset sets, and nothing else
    assert set(yaml_cfg) == set(expected), (
        f"missing {sorted(set(expected) - set(yaml_cfg))}, extra {sorted(set(yaml_cfg) - set(expected))}"
    )
    # every key is a field of the model's dataclass with a value of its type, equal to the preset's
    merged = OmegaConf.merge(OmegaConf.structured(TransformerXLMSWAConfig), yaml_cfg)
    for key, value in expected.items():
        assert yaml_cfg[key] == value and type(yaml_cfg[key]) is type(value), (key, yaml_cfg[key], value)
        assert merged[key] == value, key


def test_base_preset_is_the_dataclass_default():
    """``--arch transformer_xl_mswa`` is registered from the dataclass defaults (register_model),
    so the base preset function and the base YAML must not differ from them."""
    defaults = TransformerXLMSWAConfig()
    for key, value in preset_values("transformer_xl_mswa").items():
        assert getattr(defaults, key) == value, key


def test_tiny_yaml_builds_the_tiny_model():
    """The merged hydra config (YAML over dataclass defaults) builds the model the preset describes."""
    yaml_cfg = load_yaml("transformer_xl_mswa_tiny")
    yaml_cfg.pop("_name")
    cfg = OmegaConf.merge(
        OmegaConf.structured(TransformerXLMSWAConfig(tokens_per_sample=32, max_target_positions=32)),
        yaml_cfg,
    )
    d = make_dictionary(20)
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    model = TransformerXLMSWALanguageModel.build_model(cfg, task).eval()
    assert len(model.decoder.layers) == 4
    assert model.schedule.windows == ((1, 2, 4, 8), (2, 4, 8, 16), (4, 8, 16, 32), (8, 16, 32, 64))
    assert model.decoder.mem_lens == [7, 15, 31, 63]
    logits, _ = model(torch.randint(4, len(d), (2, 10)))
    assert logits.shape == (2, 10, len(d))
