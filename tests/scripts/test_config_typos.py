"""Typos at every level of a training config, as a user makes them, fail before anything is built: the real scripts
(``scripts/asr/*.py``) with Hydra command lines, with and without ``+``, and typos written in the YAML file itself.

Each message names the full key and the closest known key (``unknown key model.optimm; did you mean model.optim?``),
or the key, the expected type and the value (``trainer.max_steps: wrong type: got 'abc' (str), expected int``),
in one short message without a traceback. Values NeMo's configs carry (top-level values for YAML anchors,
``skip_nan_grad: true``) still load.

All cases run in one subprocess (a driver that runs each script as ``__main__`` with its own ``sys.argv``, as the
shell would), so torch is imported once: about 0.3 s a case instead of 3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "asr"

# Runs each case {"script", "args"} of the JSON list on stdin as `python <script> <args>` would, in this process,
# and prints one JSON line per case: exit status, stderr, seconds.
DRIVER = r"""
import contextlib, io, json, runpy, sys, time
for case in json.load(sys.stdin):
    sys.argv = [case["script"], *case["args"]]
    err, start, code = io.StringIO(), time.perf_counter(), 0
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(case["script"], run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    print("CASE " + json.dumps({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}),
          flush=True)
"""

CTC_BPE = ("speech_to_text_ctc_bpe.py", "--config-name=conformer_demo_bpe")
CTC = ("speech_to_text_ctc.py",)  # its default config, quartznet_15x5
RNNT = ("speech_to_text_rnnt_bpe.py",)  # fastconformer_transducer_bpe
HYBRID = ("speech_to_text_hybrid_rnnt_ctc_bpe.py",)  # fastconformer_hybrid_transducer_ctc_bpe
FINETUNE = ("speech_to_text_finetune.py",)  # speech_to_text_finetune
TRANSCRIBE = ("transcribe_speech.py",)  # a structured config (TranscriptionConfig)
CPU = ["+trainer.fast_dev_run=true", "trainer.devices=1", "trainer.accelerator=cpu", "trainer.strategy=auto"]


def _yaml(name: str, edit) -> tuple[str, ...]:
    """``conformer_demo_bpe.yaml`` changed by ``edit(text)``, written as ``<tmp>/<name>.yaml``: the config args."""
    return ("@yaml", name, edit)


# (case id, (script, *fixed args), args, what stderr must say)
TYPOS = [
    # the examples, without + (Hydra refuses the override; hydra_runner adds the closest key) and with +
    ("override", CTC_BPE, ["model.optimm.lr=0.1"], "unknown key model.optimm; did you mean model.optim?"),
    ("add", CTC_BPE, ["+model.optimm.lr=0.1"], "ConfigError: unknown key model.optimm; did you mean model.optim?"),
    ("override", CTC_BPE, ["model.spec_augmnt.freq_masks=0"],
     "unknown key model.spec_augmnt; did you mean model.spec_augment?"),
    ("add", CTC_BPE, ["+model.spec_augmnt.freq_masks=0"],
     "ConfigError: unknown key model.spec_augmnt; did you mean model.spec_augment?"),
    ("override", CTC_BPE, ["model.sample_rat=8000"], "unknown key model.sample_rat; did you mean model.sample_rate?"),
    ("add", CTC_BPE, ["+model.sample_rat=8000"],
     "ConfigError: unknown key model.sample_rat; did you mean model.sample_rate?"),
    ("type", CTC_BPE, ["trainer.max_steps=abc"],
     "ConfigError: trainer.max_steps: wrong type: got 'abc' (str), expected int"),
    ("value", CTC_BPE, ["trainer.max_steps=-5"],
     "ConfigError: trainer.max_steps: invalid value -5: must be >= 0, or -1 for no limit"),
    ("value", CTC_BPE, ["+trainer.limit_val_batches=1.5"],
     "ConfigError: trainer.limit_val_batches: invalid value 1.5: must be a fraction in [0.0, 1.0]"),
    # top-level sections
    ("override", CTC_BPE, ["trainr.max_steps=3"], "unknown key trainr; did you mean trainer?"),
    ("add", CTC_BPE, ["+trainr.max_steps=3"], "ConfigError: unknown key trainr; did you mean trainer?"),
    ("force-add", CTC_BPE, ["++trainr.max_steps=3"], "ConfigError: unknown key trainr; did you mean trainer?"),
    # exp_manager is checked even where exp_manager() does nothing (fast_dev_run)
    ("add", CTC_BPE, ["+exp_manager.resum_if_exists=true", "+trainer.fast_dev_run=true"],
     "ConfigError: unknown key exp_manager.resum_if_exists; did you mean exp_manager.resume_if_exists?"),
    # a valid key the YAML leaves out: Hydra's advice (+) is right, and hydra_runner says so
    ("absent", CTC_BPE, ["model.log_prediction=true"],
     "(model.log_prediction is a valid key that this config leaves out: the + prefix adds it)"),
    ("absent", CTC_BPE, ["model.log_predictin=true"],
     "unknown key model.log_predictin; did you mean model.log_prediction?"),
    # the other training scripts
    ("add", CTC, ["+model.sample_rat=8000"],
     "ConfigError: unknown key model.sample_rat; did you mean model.sample_rate?"),
    ("type", CTC, ["trainer.max_epochs=many"], "ConfigError: trainer.max_epochs: wrong type: got 'many' (str)"),
    ("add", RNNT, ["+model.optimm.lr=0.1"], "ConfigError: unknown key model.optimm; did you mean model.optim?"),
    ("add", RNNT, ["+model.joint.fuse_loss_wr=true"],
     "ConfigError: unknown key model.joint.fuse_loss_wr; did you mean model.joint.fuse_loss_wer?"),
    ("add", HYBRID, ["+trainr.max_steps=3"], "ConfigError: unknown key trainr; did you mean trainer?"),
    ("add", HYBRID, ["+model.aux_ctc.ctc_loss_weigth=0.5"],
     "ConfigError: unknown key model.aux_ctc.ctc_loss_weigth; did you mean model.aux_ctc.ctc_loss_weight?"),
    ("add", FINETUNE, ["+model.sample_rat=8000"],
     "ConfigError: unknown key model.sample_rat; did you mean model.sample_rate?"),
    ("add", FINETUNE, ["+init_from_nemo_modl=x.nemo"],
     "ConfigError: unknown key init_from_nemo_modl; did you mean init_from_nemo_model?"),
    ("add", TRANSCRIBE, ["+model_pat=x.nemo", "dataset_manifest=m.json"],
     "ConfigError: unknown key model_pat; did you mean model_path?"),
    ("override", TRANSCRIBE, ["model_pat=x.nemo"], "unknown key model_pat; did you mean model_path?"),
    # typos in the YAML file itself
    ("yaml", _yaml("trainer_typo", lambda t: t.replace("  max_steps: 1800", "  max_stepz: 1800")), [],
     "ConfigError: unknown key trainer.max_stepz; did you mean trainer.max_steps?"),
    ("yaml", _yaml("model_typo", lambda t: t.replace("\n  optim:", "\n  optimm:")), [],
     "ConfigError: unknown key model.optimm; did you mean model.optim?"),
    ("yaml", _yaml("root_typo", lambda t: t + "trainr:\n  max_steps: 3\n"), [],
     "ConfigError: unknown key trainr; did you mean trainer?"),
    ("yaml", _yaml("exp_typo", lambda t: t.replace("  resume_if_exists: false", "  resum_if_exists: true")),
     ["+trainer.fast_dev_run=true"],
     "ConfigError: unknown key exp_manager.resum_if_exists; did you mean exp_manager.resume_if_exists?"),
]


def _anchors(text: str) -> str:
    """NeMo's layout of examples/asr/conf/config.yaml: top-level values that YAML anchors use."""
    text = text.replace("name: ConformerDemoBPE\n", "name: ConformerDemoBPE\nsample_rate: &sample_rate 16000\n"
                                                    "dropout: &dropout 0.0\n")
    return text.replace("model:\n  sample_rate: 16000\n", "model:\n  sample_rate: *sample_rate\n")


# What still loads: validation passes and the script goes on to build the trainer and the model, until the
# tokenizer folder (deliberately missing) stops it.
LOADS = [
    ("skip_nan_grad", CTC_BPE, ["+model.skip_nan_grad=true", "+foo=1", *CPU]),
    ("anchors", _yaml("anchors", _anchors), ["+model.skip_nan_grad=false", *CPU]),
]


def _args(fixed: tuple, args: list[str], tmp: Path, tokenizer: str | None = None) -> dict:
    if fixed[0] == "@yaml":
        _, name, edit = fixed
        text = (CONFIGS / "conformer_demo_bpe.yaml").read_text()
        changed = edit(text)
        assert changed != text, name  # the edit applied
        (tmp / f"{name}.yaml").write_text(changed)
        fixed = ("speech_to_text_ctc_bpe.py", f"--config-path={tmp}", f"--config-name={name}")
    extra = [f"model.tokenizer.dir={tokenizer}"] if tokenizer else []
    return {"script": str(ROOT / "scripts" / "asr" / fixed[0]), "args": [*fixed[1:], *args, *extra]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("typos")
    missing_tokenizer = str(tmp / "no_tokenizer_here")
    cases = [_args(fixed, args, tmp) for _, fixed, args, _ in TYPOS]
    cases += [_args(fixed, args, tmp, missing_tokenizer) for _, fixed, args in LOADS]
    run = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases), cwd=tmp, capture_output=True,
                         text=True, timeout=300)
    out = [json.loads(line[5:]) for line in run.stdout.splitlines() if line.startswith("CASE ")]
    assert len(out) == len(cases), run.stderr[-3000:]
    assert not list(tmp.rglob("*.ckpt")) and not (tmp / "nemo_experiments").exists()  # nothing was trained
    return {"typos": out[: len(TYPOS)], "loads": out[len(TYPOS):], "missing_tokenizer": missing_tokenizer}


@pytest.mark.parametrize("index", range(len(TYPOS)),
                         ids=[f"{kind}:{args[0] if args else fixed[1]}" for kind, fixed, args, _ in TYPOS])
def test_typo_is_one_short_message_naming_the_key(results, index):
    _, _, _, message = TYPOS[index]
    result = results["typos"][index]
    assert result["code"] == 1 and message in result["stderr"], result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert result["seconds"] < 10  # refused before any data, trainer or model is built


@pytest.mark.parametrize("index", range(len(LOADS)), ids=[case[0] for case in LOADS])
def test_what_nemo_configs_carry_still_loads(results, index):
    result = results["loads"][index]
    assert result["code"] == 1, result["stderr"][-3000:]
    assert "ConfigError" not in result["stderr"], result["stderr"][-3000:]
    assert f"{results['missing_tokenizer']}/tokenizer.model" in result["stderr"], result["stderr"][-3000:]
