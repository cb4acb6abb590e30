"""One measurement of ``scripts/bench/vs_nemo.py``, in a fresh process, for nemofn or for NeMo.

    python scripts/bench/vs_nemo_worker.py '{"task": "transcribe", "system": "nemofn", ...}'

It runs under either interpreter (the project's, or ``--vs-nemo``'s with ``nemo_toolkit[asr]==3.0.0``) and imports
only torch, omegaconf and the system under test: ``compat`` (nemofn's NeMo API) or ``nemo``. The two systems run the
same lines; only the import differs. The answer is the last stdout line, ``@@bench {json}``.

Tasks (keys of the JSON argument):

* ``transcribe``: ``nemo`` (a ``.nemo``), ``files`` (audio paths), ``seconds`` (their total duration), ``batch``;
  optional ``attention`` (``[model, [left, right]]`` for ``change_attention_model``) and ``chunking`` (for
  ``change_subsampling_conv_chunking_factor``), ``autocast`` (a dtype name: transcribe under CPU autocast, as
  ``transcribe_speech.py``'s ``compute_dtype`` does). Restores, transcribes the first ``batch`` files once (warm-up), then
  times ``transcribe(files, batch_size=batch)``. Answers the seconds, RTFx, texts and peak RSS.
* ``train``: ``config`` (a NeMo-layout YAML), ``model_class``, ``train_manifest``, ``tokenizer_dir`` (BPE), ``batch``,
  ``warmup``, ``steps``, ``overrides`` (dotted keys), ``precision`` (the Trainer's; default 32). Builds the model from the config and trains it with the
  system's Trainer (Lightning's for NeMo, ``compat.Trainer`` for nemofn) for ``warmup + steps`` steps on the
  manifest in file order (no shuffling, so both systems see the same batches), no validation, no checkpoints, no
  logger. Times the steps after the warm-up from a callback. Answers utterances/s, audio seconds/s, peak RSS.
* ``cold``: ``nemo``, ``files`` (one): import, restore and transcribe one file; the parent times the process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

T0 = time.perf_counter()
PREFIX = "@@bench "


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _answer(**values) -> None:
    values.setdefault("peak_rss_mb", _peak_rss_mb())
    print(PREFIX + json.dumps(values), flush=True)


def _asr_model_class(system: str, name: str = "ASRModel"):
    if system == "nemo":
        import nemo.collections.asr.models as models
    elif system == "nemofn":
        import compat.collections.asr.models as models
    else:
        raise ValueError(f"unknown system {system!r}; use 'nemo' or 'nemofn'")
    return getattr(models, name)


def _texts(hyps) -> list[str]:
    if isinstance(hyps, tuple):  # an older NeMo's (best, all) pair
        hyps = hyps[0]
    return [h if isinstance(h, str) else h.text for h in hyps]


def _restore(system: str, path: str, task: dict):
    model = _asr_model_class(system).restore_from(path, map_location="cpu")
    model.eval()
    if task.get("attention"):
        kind, context = task["attention"]
        model.change_attention_model(kind, context)
    if task.get("chunking"):
        model.change_subsampling_conv_chunking_factor(int(task["chunking"]))
    return model


def transcribe(task: dict) -> None:
    model = _restore(task["system"], task["nemo"], task)
    files, batch = task["files"], int(task["batch"])
    if task.get("warmup", True):
        model.transcribe(files[:batch], batch_size=batch, verbose=False)
    start = time.perf_counter()
    if task.get("autocast"):  # what transcribe_speech.py's compute_dtype / amp do
        import torch

        with torch.autocast("cpu", dtype=getattr(torch, task["autocast"])):
            hyps = model.transcribe(files, batch_size=batch, verbose=False)
    else:
        hyps = model.transcribe(files, batch_size=batch, verbose=False)
    seconds = time.perf_counter() - start
    _answer(seconds=seconds, rtfx=task["seconds"] / seconds, texts=_texts(hyps))


def cold(task: dict) -> None:
    model = _asr_model_class(task["system"]).restore_from(task["nemo"], map_location="cpu")
    hyps = model.transcribe(task["files"], batch_size=1, verbose=False)
    _answer(seconds=time.perf_counter() - T0, texts=_texts(hyps))


def _trainer_class(system: str):
    if system == "nemo":
        import lightning.pytorch as pl

        return pl.Trainer, pl.Callback
    from compat.trainer import Trainer

    return Trainer, object


def train(task: dict) -> None:
    from omegaconf import OmegaConf, open_dict

    system = task["system"]
    Trainer, Callback = _trainer_class(system)
    model_class = _asr_model_class(system, task["model_class"])
    cfg = OmegaConf.load(task["config"])
    warmup, steps, batch = int(task["warmup"]), int(task["steps"]), int(task["batch"])
    with open_dict(cfg):
        for key, value in task.get("overrides", {}).items():
            OmegaConf.update(cfg, key, value, force_add=True)
        ds = cfg.model.train_ds
        ds.manifest_filepath = task["train_manifest"]
        ds.batch_size = batch
        ds.shuffle = False
        ds.use_semi_sorted_batching = False
        ds.num_workers = 0
        cfg.model.validation_ds = None
        cfg.model.test_ds = None
        if "tokenizer" in cfg.model:
            cfg.model.tokenizer.dir = task["tokenizer_dir"]
    OmegaConf.resolve(cfg)

    class StepClock(Callback):
        """Wall clock at the start of every step, and the audio seconds of each batch."""

        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []
            self.audio_s: list[float] = []
            self.utts: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch_data, batch_idx) -> None:
            self.starts.append(time.perf_counter())
            self.audio_s.append(float(batch_data[1].sum()) / float(cfg.model.sample_rate))
            self.utts.append(int(batch_data[0].shape[0]))

        def on_train_end(self, trainer, pl_module) -> None:
            self.starts.append(time.perf_counter())

    clock = StepClock()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, max_epochs=-1,
                      precision=task.get("precision", 32),
                      logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                      enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=int(cfg.trainer.get("log_every_n_steps", 50)), callbacks=[clock])
    model = model_class(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)
    if len(clock.starts) < warmup + steps + 1:
        raise RuntimeError(f"training ran {len(clock.starts) - 1} steps, expected {warmup + steps}")
    span = clock.starts[warmup + steps] - clock.starts[warmup]
    timed = slice(warmup, warmup + steps)
    _answer(seconds=span, step_s=span / steps, utt_per_s=sum(clock.utts[timed]) / span,
            audio_s_per_s=sum(clock.audio_s[timed]) / span,
            params=sum(p.numel() for p in model.parameters()),
            step_times=[round(b - a, 4) for a, b in zip(clock.starts, clock.starts[1:])])


def main() -> None:
    task = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(int(task.get("threads", torch.get_num_threads())))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    {"transcribe": transcribe, "train": train, "cold": cold}[task["task"]](task)


if __name__ == "__main__":
    main()
