"""nemofn.asr.configs.decoding: NeMo 3.0's CTCDecodingConfig and merging a partial decoding config onto it."""

from __future__ import annotations

import math
import tarfile

import pytest
import yaml
from omegaconf import OmegaConf

from nemofn.asr.configs.decoding import CTC_DECODING_DEFAULTS, CTCDecodingConfig, default_decoding, merge_decoding
from nemofn.core.schema import ConfigError, defaults_of


def test_defaults_are_what_nemo_writes_into_model_config(nemo3_dir):
    for name in ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe"):
        with tarfile.open(nemo3_dir / f"{name}.nemo") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
            written = yaml.safe_load(tar.extractfile(member))["decoding"]
        assert written == CTC_DECODING_DEFAULTS, name


def test_defaults_without_the_reference_files():
    d = CTC_DECODING_DEFAULTS
    assert d["strategy"] == "greedy_batch" and d["temperature"] == 1.0 and d["segment_seperators"] == [".", "!", "?"]
    assert d["beam"]["beam_size"] == 4 and d["wfst"]["beam_size"] == 4 and d["wfst"]["riva_decoding_cfg"] == {}
    assert d["beam"]["flashlight_cfg"]["unk_weight"] == -math.inf
    assert d["greedy"]["confidence_method_cfg"]["temperature"] == "DEPRECATED"
    structured = OmegaConf.to_container(OmegaConf.structured(CTCDecodingConfig))
    assert structured == d == defaults_of(CTCDecodingConfig)
    assert default_decoding() == OmegaConf.create(d) and default_decoding() is not default_decoding()


def test_merge_checks_every_nested_key():
    merged = merge_decoding({"strategy": "greedy", "greedy": {"preserve_alignments": True}})
    assert merged.strategy == "greedy" and merged.greedy.preserve_alignments and merged.beam.beam_size == 4
    assert merge_decoding(None) == default_decoding()
    with pytest.raises(ConfigError) as info:
        merge_decoding({"greedy": {"preserve_alignment": True}}, "model.decoding")
    assert str(info.value) == ("unknown key model.decoding.greedy.preserve_alignment; did you mean "
                               "model.decoding.greedy.preserve_alignments?")
    with pytest.raises(ConfigError, match="decoding.strategy: invalid value 'greedyy'"):
        merge_decoding({"strategy": "greedyy"})
    with pytest.raises(ConfigError, match="decoding.beam.beam_size: wrong type"):
        merge_decoding({"beam": {"beam_size": "four"}})
    merged = merge_decoding({"strategy": "beam", "old_key": 1, "beam": {"gone": 2}}, unknown="warn")
    assert merged.strategy == "beam" and "old_key" not in merged and "gone" not in merged.beam
