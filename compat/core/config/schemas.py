"""Schemas of a NeMo training script's ``trainer:`` and ``exp_manager:`` blocks, checked by ``nemofn.core.schema``.

:class:`TrainerConfig` holds every argument of Lightning 2.x's ``Trainer`` that NeMo's ASR configs use, with
Lightning's defaults (NeMo's own ``TrainerConfig`` dataclass has other defaults, e.g. ``max_epochs: 1000``; a
``trainer:`` block that leaves a key out gets Lightning's value in NeMo, so Lightning's are the ones here).
:class:`ExpManagerConfig`, :class:`CallbackParams` and the nested parameter classes are NeMo 3.0's, fields and
defaults. Check a block with::

    trainer = validate_section(cfg.trainer, TrainerConfig, "trainer")   # ConfigError naming trainer.max_stepz

or a whole experiment (its top level, ``model``, ``trainer`` and ``exp_manager``) with
:func:`validate_experiment_config`, which the training scripts call before they build anything.

The top level (:class:`ExperimentConfig`) holds what NeMo's scripts read there (``name``, the three sections,
``init_from_*``). NeMo's configs also keep values there that YAML anchors or ``${...}`` interpolations use
(``sample_rate: &sample_rate 16000`` in ``examples/asr/conf/config.yaml``), so another top-level key is an error
only when it is a near-miss of a known one (``trainr`` for ``trainer``) and nothing interpolates it; otherwise it is
logged (a warning when it is the name of a ``trainer`` or ``exp_manager`` key: ``max_steps`` for
``trainer.max_steps``).

Values follow Lightning's own checks (``max_steps`` >= -1, ``limit_val_batches`` a fraction in [0, 1] or a whole
number of batches, ...), so a config Lightning would refuse is refused here too, naming the key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nemofn.asr.configs.models import model_schema, validate_model_config
from nemofn.core.schema import ConfigError, closest_key, option, schema_fields, to_plain, validate, validate_section

__all__ = [
    "ExperimentConfig", "TrainerConfig", "ExpManagerConfig", "CallbackParams", "EarlyStoppingParams",
    "IPLEpochStopperParams", "StepTimingParams", "EMAParams", "StragglerDetectionParams", "FaultToleranceParams",
    "MLFlowParams", "DLLoggerParams", "ClearMLParams", "validate_section", "validate_experiment_config",
    "declared_keys", "ConfigError",
]

logger = logging.getLogger(__name__)

_PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
               "64-true", "transformer-engine", "transformer-engine-float16")


def _steps_limit(value: Any) -> str | None:
    """Lightning's rule for ``max_steps`` / ``max_epochs``."""
    return "must be >= 0, or -1 for no limit (as in Lightning)" if value is not None and value < -1 else None


def _batches(value: Any) -> str | None:
    """Lightning's rule for ``limit_*_batches``, ``overfit_batches`` and ``val_check_interval``."""
    if value is None or 0 <= value <= 1 or (value > 1 and value % 1 == 0):
        return None
    return "must be a fraction in [0.0, 1.0] or a whole number of batches (as in Lightning)"


def _at_least(minimum: int) -> Any:
    def check(value: Any) -> str | None:
        return f"must be >= {minimum}" if value is not None and value < minimum else None

    return check


def _fast_dev_run(value: Any) -> str | None:
    if not isinstance(value, bool) and value < 0:
        return "must be true, false or a number of batches >= 0 (as in Lightning)"
    return None


@dataclass
class TrainerConfig:
    """``trainer:``: Lightning 2.x ``Trainer`` arguments with Lightning's defaults.

    ``strategy`` is a name (``ddp``, ``auto``) or a ``_target_`` mapping (NeMo's ``DDPStrategy`` block);
    ``devices`` an int, a string (``auto``, ``"0,1"``) or a list of device ids; ``precision`` an int or a string.
    """

    accelerator: Any = option("auto", types=(str, dict))
    strategy: Any = option("auto", types=(str, dict))
    devices: Any = option("auto", types=(int, str, List[int]))
    num_nodes: int = option(1, check=_at_least(1))
    precision: Optional[Any] = option(None, types=(int, str, None), choices=_PRECISIONS)
    logger: Optional[Any] = option(None, types=(bool, dict, list, None))
    callbacks: Optional[Any] = option(None, types=(list, dict, None))
    fast_dev_run: Any = option(False, types=(bool, int), check=_fast_dev_run)
    max_epochs: Optional[int] = option(None, check=_steps_limit)
    min_epochs: Optional[int] = None
    max_steps: int = option(-1, check=_steps_limit)
    min_steps: Optional[int] = None
    max_time: Optional[Any] = option(None, types=(str, dict, None))
    limit_train_batches: Optional[Any] = option(None, types=(int, float, None), check=_batches)
    limit_val_batches: Optional[Any] = option(None, types=(int, float, None), check=_batches)
    limit_test_batches: Optional[Any] = option(None, types=(int, float, None), check=_batches)
    limit_predict_batches: Optional[Any] = option(None, types=(int, float, None), check=_batches)
    overfit_batches: Any = option(0.0, types=(int, float), check=_batches)
    val_check_interval: Optional[Any] = option(None, types=(int, float, None), check=_batches)
    check_val_every_n_epoch: Optional[int] = option(1, check=_at_least(1))
    num_sanity_val_steps: Optional[int] = option(None, check=_at_least(-1))
    log_every_n_steps: Optional[int] = None
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = option(1, check=_at_least(1))
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = option(None, choices=("norm", "value"))
    deterministic: Optional[Any] = option(None, types=(bool, str, None))
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Optional[Any] = option(None, types=(str, dict, None))
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Optional[Any] = option(None, types=(str, dict, list, None))
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None
    # nemofn's own (Lightning has none): stop after this many non-finite steps in a row (each is skipped); 0: never
    max_consecutive_skips: int = option(10, check=_at_least(0))


@dataclass
class CallbackParams:
    """``exp_manager.checkpoint_callback_params`` (NeMo's ``ModelCheckpoint`` arguments)."""

    filepath: Optional[str] = None  # deprecated in NeMo
    dirpath: Optional[str] = None
    filename: Optional[str] = None
    monitor: Optional[str] = "val_loss"
    verbose: Optional[bool] = True
    save_last: Optional[Any] = option(True, types=(bool, str, None))  # Lightning also takes "link"
    save_top_k: Optional[int] = 3
    save_weights_only: Optional[bool] = False
    mode: Optional[str] = option("min", choices=("min", "max"))
    auto_insert_metric_name: bool = True
    every_n_epochs: Optional[int] = 1
    every_n_train_steps: Optional[int] = None
    train_time_interval: Optional[Any] = None
    prefix: Optional[str] = None
    postfix: str = ".nemo"
    save_best_model: bool = False
    always_save_nemo: bool = False
    save_nemo_on_train_end: Optional[bool] = True
    model_parallel_size: Optional[int] = None
    save_on_train_epoch_end: Optional[bool] = False
    async_save: Optional[bool] = False
    save_last_n_optim_states: Optional[int] = -1


@dataclass
class EarlyStoppingParams:
    monitor: str = "val_loss"
    mode: str = option("min", choices=("min", "max"))
    min_delta: float = 0.001
    patience: int = 10
    verbose: bool = True
    strict: bool = True
    check_finite: bool = True
    stopping_threshold: Optional[float] = None
    divergence_threshold: Optional[float] = None
    check_on_train_epoch_end: Optional[bool] = None
    log_rank_zero_only: bool = False


@dataclass
class IPLEpochStopperParams:
    enable_stop: bool = True
    stop_every_n_epochs: int = 1


@dataclass
class StepTimingParams:
    reduction: Optional[str] = "mean"
    sync_cuda: Optional[bool] = False
    buffer_size: Optional[int] = 1


@dataclass
class EMAParams:
    enable: Optional[bool] = False
    decay: Optional[float] = 0.999
    cpu_offload: Optional[bool] = False
    validate_original_weights: Optional[bool] = False
    every_n_steps: int = 1


@dataclass
class StragglerDetectionParams:
    report_time_interval: float = 300
    calc_relative_gpu_perf: bool = True
    calc_individual_gpu_perf: bool = True
    num_gpu_perf_scores_to_log: int = 5
    gpu_relative_perf_threshold: float = 0.7
    gpu_individual_perf_threshold: float = 0.7
    stop_if_detected: bool = False


@dataclass
class FaultToleranceParams:
    workload_check_interval: float = 5.0
    initial_rank_heartbeat_timeout: Optional[float] = 60.0 * 60.0
    rank_heartbeat_timeout: Optional[float] = 45.0 * 60.0
    calculate_timeouts: bool = True
    safety_factor: float = 5.0
    rank_termination_signal: Any = option(9, types=(int, str))  # NeMo: signal.SIGKILL
    log_level: str = "INFO"
    max_rank_restarts: int = 0
    max_subsequent_job_failures: int = 0
    additional_ft_launcher_args: str = ""
    simulated_fault: Optional[Any] = None


@dataclass
class MLFlowParams:
    experiment_name: Optional[str] = None
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = None
    tags: Optional[Dict[str, Any]] = None
    save_dir: Optional[str] = "./mlruns"
    prefix: str = ""
    artifact_location: Optional[str] = None
    run_id: Optional[str] = None
    log_model: bool = False


@dataclass
class DLLoggerParams:
    verbose: Optional[bool] = False
    stdout: Optional[bool] = False
    json_file: Optional[str] = "./dllogger.json"


@dataclass
class ClearMLParams:
    project: Optional[str] = None
    task: Optional[str] = None
    connect_pytorch: Optional[bool] = False
    model_name: Optional[str] = None
    tags: Optional[List[str]] = None
    log_model: Optional[bool] = False
    log_cfg: Optional[bool] = False
    log_metrics: Optional[bool] = False


@dataclass
class ExpManagerConfig:
    """``exp_manager:``: NeMo 3.0's ``ExpManagerConfig`` (fields and defaults).

    ``summary_writer_kwargs``, ``wandb_logger_kwargs`` and ``neptune_logger_kwargs`` are free-form (the loggers'
    own arguments).
    """

    explicit_log_dir: Optional[str] = None
    exp_dir: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    use_datetime_version: Optional[bool] = True
    resume_if_exists: Optional[bool] = False
    resume_past_end: Optional[bool] = False
    resume_ignore_no_checkpoint: Optional[bool] = False
    resume_from_checkpoint: Optional[str] = None
    create_tensorboard_logger: Optional[bool] = True
    summary_writer_kwargs: Optional[Dict[str, Any]] = None
    create_wandb_logger: Optional[bool] = False
    wandb_logger_kwargs: Optional[Dict[str, Any]] = None
    create_mlflow_logger: Optional[bool] = False
    mlflow_logger_kwargs: Optional[MLFlowParams] = field(default_factory=MLFlowParams)
    create_dllogger_logger: Optional[bool] = False
    dllogger_logger_kwargs: Optional[DLLoggerParams] = field(default_factory=DLLoggerParams)
    create_clearml_logger: Optional[bool] = False
    clearml_logger_kwargs: Optional[ClearMLParams] = field(default_factory=ClearMLParams)
    create_neptune_logger: Optional[bool] = False
    neptune_logger_kwargs: Optional[Dict[str, Any]] = None
    create_checkpoint_callback: Optional[bool] = True
    checkpoint_callback_params: Optional[CallbackParams] = field(default_factory=CallbackParams)
    create_early_stopping_callback: Optional[bool] = False
    create_ipl_epoch_stopper_callback: Optional[bool] = False
    early_stopping_callback_params: Optional[EarlyStoppingParams] = field(default_factory=EarlyStoppingParams)
    ipl_epoch_stopper_callback_params: Optional[IPLEpochStopperParams] = field(
        default_factory=IPLEpochStopperParams)
    create_preemption_callback: Optional[bool] = True
    files_to_copy: Optional[List[str]] = None
    log_step_timing: Optional[bool] = True
    log_delta_step_timing: Optional[bool] = False
    step_timing_kwargs: Optional[StepTimingParams] = field(default_factory=StepTimingParams)
    disable_validation_on_resume: Optional[bool] = True
    ema: Optional[EMAParams] = field(default_factory=EMAParams)
    max_time_per_run: Optional[str] = None
    seconds_to_sleep: float = 5
    create_straggler_detection_callback: Optional[bool] = False
    straggler_detection_params: Optional[StragglerDetectionParams] = field(default_factory=StragglerDetectionParams)
    create_fault_tolerance_callback: Optional[bool] = False
    fault_tolerance: Optional[FaultToleranceParams] = field(default_factory=FaultToleranceParams)
    log_tflops_per_sec_per_gpu: Optional[bool] = True


@dataclass
class ExperimentConfig:
    """The top level of a training script's config: the keys NeMo's training scripts and ``ModelPT`` read there.

    ``model``, ``trainer`` and ``exp_manager`` are checked with their own schemas by
    :func:`validate_experiment_config`; ``hydra`` and ``defaults`` are Hydra's (present in a YAML file, gone from
    the config a script receives).
    """

    name: Optional[str] = None
    model: Optional[Dict[str, Any]] = None
    trainer: Optional[Dict[str, Any]] = None
    exp_manager: Optional[Dict[str, Any]] = None
    # ModelPT.maybe_init_from_pretrained_checkpoint (and the fine-tuning script): a path / name, or a mapping
    # of them with include / exclude lists
    init_from_nemo_model: Optional[Any] = option(None, types=(str, dict, None))
    init_from_pretrained_model: Optional[Any] = option(None, types=(str, dict, None))
    init_from_ptl_ckpt: Optional[Any] = option(None, types=(str, dict, None))
    init_strict: bool = True
    hydra: Optional[Dict[str, Any]] = None
    defaults: Optional[List[Any]] = None


#: How close (rapidfuzz ratio, 0-100) an unknown top-level key must be to a known one to be taken for a typo of it.
#: Above the default 60 of nested blocks, as free top-level values are normal here: ``trainr``/``trainer`` 92,
#: ``modle``/``model`` 80, ``exp_manger``/``exp_manager`` 95; ``model_name``/``model`` 67 and ``exp_name``/
#: ``exp_manager`` 74 stay free values.
ROOT_NEAR_MISS = 75


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _interpolated(key: str, texts: list[str]) -> bool:
    """Whether an absolute ``${key}``, ``${key.x}``, ``${key[0]}`` or ``${resolver:key...}`` refers to ``key``."""
    pattern = re.compile(r"\$\{(?:[\w.]+:)?\s*" + re.escape(key) + r"(?![\w-])")
    return any(pattern.search(text) for text in texts if "${" in text)


def _check_top_level(plain: dict, unknown_keys: str) -> list[str]:
    """The top-level keys outside :class:`ExperimentConfig` (see the module doc): errors for near-misses, logs for
    the rest. Returns the near-misses found in ``"warn"`` mode."""
    known = list(schema_fields(ExperimentConfig))
    texts = _strings(plain)
    found: list[str] = []
    for key in map(str, plain):
        if key in known or _interpolated(key, texts):
            continue
        near = closest_key(key, known, cutoff=ROOT_NEAR_MISS)
        if near is not None:
            if unknown_keys == "error":
                raise ConfigError(f"unknown key {key}; did you mean {near}?", key=key, suggestion=near)
            logger.warning("unknown top-level config key %s is ignored; did you mean %s?", key, near)
            found.append(key)
            continue
        section = next((name for name, schema in (("trainer", TrainerConfig), ("exp_manager", ExpManagerConfig))
                        if key in schema_fields(schema)), None)
        if section is not None:
            logger.warning("top-level config key %s is read by nothing; did you mean %s.%s?", key, section, key)
        else:
            logger.info("top-level config key %s is read by nothing in the training scripts (fine for a value that "
                        "YAML anchors use)", key)
    return found


def _block_schema(t: tuple) -> type | None:
    """The dataclass of a field typed with one (``("schema", cls)``, optionally ``Optional``), else None."""
    if t[0] == "opt":
        t = t[1]
    return t[1] if t[0] == "schema" else None


def declared_keys(path: str, block: Any = None) -> list[str] | None:
    """The keys the schemas declare for the block at ``path`` of an experiment config, or None when unknown here.

    Known: the top level (``""``), ``model`` (its schema chosen from ``block``, the ``model:`` block itself),
    ``trainer``, ``exp_manager`` and ``exp_manager``'s parameter blocks (``exp_manager.checkpoint_callback_params``).
    """
    if path == "":
        return list(schema_fields(ExperimentConfig))
    if path == "model":
        plain = to_plain(block)
        return list(schema_fields(model_schema(plain))) if isinstance(plain, dict) else None
    head, *rest = path.split(".")
    schema = {"trainer": TrainerConfig, "exp_manager": ExpManagerConfig}.get(head)
    for part in rest:
        field_ = schema_fields(schema).get(part) if schema is not None else None
        schema = _block_schema(field_.type) if field_ is not None else None
    return list(schema_fields(schema)) if schema is not None else None


def validate_experiment_config(cfg: Any, *, unknown_keys: str = "error", finetune: bool | None = None) -> list[str]:
    """Checks an experiment config: its top level, and the ``model``, ``trainer`` and ``exp_manager`` blocks.

    Nothing is resolved, so ``???`` values and ``${...}`` interpolations pass. Top-level keys other than those of
    :class:`ExperimentConfig` are values for YAML anchors and interpolations: an error only when one is a near-miss
    of a known key (``trainr``) that nothing interpolates (see the module doc).

    Args:
        cfg: the whole config a training script receives (DictConfig or mapping).
        unknown_keys: ``"error"``, or ``"warn"`` (unknown keys logged once each and returned).
        finetune: passed to :func:`~nemofn.asr.configs.models.validate_model_config` (``True`` for the
            ``model:`` block of a fine-tuning script; ``None`` tells from its keys).

    Returns:
        The full keys of the unknown keys found (empty with ``unknown_keys="error"``).

    Raises:
        ConfigError: naming the full key (``trainr``, ``trainer.max_stepz``, ``model.encoder.d_modle``, ...) and,
            for an unknown key, the closest known one.
    """
    plain = to_plain(cfg)
    if not isinstance(plain, dict):
        raise ConfigError(f"expected an experiment config mapping, got {type(cfg).__name__}")
    found = _check_top_level(plain, unknown_keys)
    validate({k: v for k, v in plain.items() if k in schema_fields(ExperimentConfig)}, ExperimentConfig)
    if plain.get("model") is not None:
        found += validate_model_config(plain["model"], unknown_keys=unknown_keys, finetune=finetune)
    for key, schema in (("trainer", TrainerConfig), ("exp_manager", ExpManagerConfig)):
        if plain.get(key) is not None:
            found += validate(plain[key], schema, key, unknown=unknown_keys)
    return found
