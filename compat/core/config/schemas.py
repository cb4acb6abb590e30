"""Schemas of a NeMo training script's ``trainer:`` and ``exp_manager:`` blocks, checked by ``nemofn.core.schema``.

:class:`TrainerConfig` holds every argument of Lightning 2.x's ``Trainer`` that NeMo's ASR configs use, with
Lightning's defaults (NeMo's own ``TrainerConfig`` dataclass has other defaults, e.g. ``max_epochs: 1000``; a
``trainer:`` block that leaves a key out gets Lightning's value in NeMo, so Lightning's are the ones here).
:class:`ExpManagerConfig`, :class:`CallbackParams` and the nested parameter classes are NeMo 3.0's, fields and
defaults. Check a block with::

    trainer = validate_section(cfg.trainer, TrainerConfig, "trainer")   # ConfigError naming trainer.max_stepz

or a whole experiment (``model``, ``trainer`` and ``exp_manager``) with :func:`validate_experiment_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nemofn.asr.configs.models import validate_model_config
from nemofn.core.schema import ConfigError, option, to_plain, validate, validate_section

__all__ = [
    "TrainerConfig", "ExpManagerConfig", "CallbackParams", "EarlyStoppingParams", "IPLEpochStopperParams",
    "StepTimingParams", "EMAParams", "StragglerDetectionParams", "FaultToleranceParams", "MLFlowParams",
    "DLLoggerParams", "ClearMLParams", "validate_section", "validate_experiment_config", "ConfigError",
]

_PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
               "64-true", "transformer-engine", "transformer-engine-float16")


@dataclass
class TrainerConfig:
    """``trainer:``: Lightning 2.x ``Trainer`` arguments with Lightning's defaults.

    ``strategy`` is a name (``ddp``, ``auto``) or a ``_target_`` mapping (NeMo's ``DDPStrategy`` block);
    ``devices`` an int, a string (``auto``, ``"0,1"``) or a list of device ids; ``precision`` an int or a string.
    """

    accelerator: Any = option("auto", types=(str, dict))
    strategy: Any = option("auto", types=(str, dict))
    devices: Any = option("auto", types=(int, str, List[int]))
    num_nodes: int = 1
    precision: Optional[Any] = option(None, types=(int, str, None), choices=_PRECISIONS)
    logger: Optional[Any] = option(None, types=(bool, dict, list, None))
    callbacks: Optional[Any] = option(None, types=(list, dict, None))
    fast_dev_run: Any = option(False, types=(bool, int))
    max_epochs: Optional[int] = None
    min_epochs: Optional[int] = None
    max_steps: int = -1
    min_steps: Optional[int] = None
    max_time: Optional[Any] = option(None, types=(str, dict, None))
    limit_train_batches: Optional[Any] = option(None, types=(int, float, None))
    limit_val_batches: Optional[Any] = option(None, types=(int, float, None))
    limit_test_batches: Optional[Any] = option(None, types=(int, float, None))
    limit_predict_batches: Optional[Any] = option(None, types=(int, float, None))
    overfit_batches: Any = option(0.0, types=(int, float))
    val_check_interval: Optional[Any] = option(None, types=(int, float, None))
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: Optional[int] = None
    log_every_n_steps: Optional[int] = None
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = 1
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


def validate_experiment_config(cfg: Any, *, unknown_keys: str = "error") -> list[str]:
    """Checks the ``model``, ``trainer`` and ``exp_manager`` blocks of an experiment config (those present).

    Other top-level keys (``name``, ``hydra``, values that YAML anchors or interpolations refer to) are left
    alone. Nothing is resolved, so ``???`` values and ``${...}`` interpolations pass.

    Returns:
        The full keys of the unknown keys found (empty with ``unknown_keys="error"``).

    Raises:
        ConfigError: naming the full key (``trainer.max_stepz``, ``model.encoder.d_modle``, ...).
    """
    plain = to_plain(cfg)
    if not isinstance(plain, dict):
        raise ConfigError(f"expected an experiment config mapping, got {type(cfg).__name__}")
    found: list[str] = []
    if plain.get("model") is not None:
        found += validate_model_config(plain["model"], unknown_keys=unknown_keys)
    for key, schema in (("trainer", TrainerConfig), ("exp_manager", ExpManagerConfig)):
        if plain.get(key) is not None:
            found += validate(plain[key], schema, key, unknown=unknown_keys)
    return found

