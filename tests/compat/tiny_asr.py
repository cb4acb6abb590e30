"""A tiny char CTC model and corpus shared by the compat tests (helpers, not tests).

Test modules load it by path (``tests/`` is not a package; pytest runs with ``--import-mode=importlib``)::

    tiny = load_helpers()          # see any compat test module
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

LABELS = [" ", "a", "b", "c", "d", "e"]
TEXTS = ["abc", "bad", "cab de", "dead", "bee", "ace"]


def write_corpus(folder: Path, name: str = "train", n: int = 6) -> str:
    """``n`` short tone + noise clips and a manifest with char-label texts; returns the manifest path."""
    rng = np.random.default_rng(len(name))
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        samples = int(16000 * (0.3 + 0.05 * i))
        t = np.arange(samples) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(samples)
        path = folder / f"{name}_{i}.wav"
        sf.write(path, audio.astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": samples / 16000, "text": TEXTS[i % 6]}))
    manifest = folder / f"{name}_manifest.json"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def tiny_cfg(train: str | None = None, val=None, test: str | None = None, **extra) -> dict:
    def ds(path, shuffle=None):
        out = {"manifest_filepath": path, "sample_rate": 16000, "batch_size": 2, "labels": LABELS}
        if shuffle is not None:
            out["shuffle"] = shuffle
        return out

    cfg = {
        "sample_rate": 16000,
        "labels": LABELS,
        "train_ds": ds(train),
        "validation_ds": ds(val, False),
        "test_ds": ds(test, False),
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "features": 16, "n_fft": 512, "window_size": 0.02,
                         "window_stride": 0.01, "normalize": "per_feature", "dither": 1e-5},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 1,
                         "time_masks": 1, "freq_width": 4, "time_width": 0.05},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 16, "activation": "relu",
                    "conv_mask": True, "jasper": [
                        {"filters": 24, "repeat": 1, "kernel": [11], "stride": [2], "dilation": [1], "dropout": 0.0,
                         "residual": False, "separable": True},
                        {"filters": 24, "repeat": 1, "kernel": [1], "stride": [1], "dilation": [1], "dropout": 0.0,
                         "residual": False}]},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None, "num_classes": -1,
                    "vocabulary": LABELS},
        "optim": {"name": "adamw", "lr": 0.01, "sched": {"name": "CosineAnnealing", "warmup_steps": 2,
                                                          "min_lr": 1e-5}},
    }
    cfg.update(extra)
    return cfg


#: compat.Trainer options for quick, quiet test runs on the CPU.
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)


def small_corpus(root: Path) -> dict[str, str]:
    """A 6-clip training and a 4-clip validation manifest under ``root``."""
    return {"train": write_corpus(root, "train", 6), "val": write_corpus(root, "val", 4)}
