"""ASR data: NeMo manifests, audio reading, the up-front data checks, the audio-to-text dataset and batching.

Names are imported lazily, so that ``nemofn.asr.data.manifest`` loads without torch (the demo corpus synthesiser's
worker processes, ``scripts/data/demo_corpus.py``, stay small).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioError": "errors", "DataConfigError": "errors", "ManifestError": "errors", "BadManifestError": "errors",
    "ManifestEntry": "manifest", "load_manifests": "manifest", "read_manifest": "manifest",
    "split_manifest_paths": "manifest", "write_manifest": "manifest", "manifest_lines": "manifest",
    "check_manifest_audio": "manifest_check", "AudioCheckReport": "manifest_check", "BadLine": "manifest_check",
    "check_transcripts": "transcript_check",
    "load_audio": "audio", "audio_info": "audio", "resample": "audio", "select_channels": "audio",
    "AudioToTextDataset": "dataset", "DatasetConfig": "dataset", "build_dataset": "dataset",
    "build_dataloader": "dataset",
    "collate": "batching", "EpochBatchSampler": "batching", "RandomBatchSampler": "batching",
    "SemiSortedBatchSampler": "batching",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nemofn.asr.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nemofn.asr.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
