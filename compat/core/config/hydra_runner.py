"""``hydra_runner``: NeMo's decorator for Hydra training scripts, built on Hydra 1.3's public ``hydra.main``.

A NeMo script reads::

    @hydra_runner(config_path="../conf", config_name="config")
    def main(cfg): ...

    if __name__ == "__main__":
        main()

and accepts Hydra's whole command line: ``key=value``, ``+key=value``, ``++key=value``, ``~key``,
``--config-path/-cp``, ``--config-name/-cn``, ``--config-dir/-cd``, ``-m/--multirun`` (sweeps such as
``-m model.optim.lr=0.1,0.01``, run one after the other by Hydra's basic launcher), ``--cfg job|hydra|all``
(print the composed config and exit without running), ``--resolve``, ``--info``, ``--help`` and ``--hydra-help``.
A missing config, a bad override or a failing job ends the process with Hydra's own short message and exit
status 1 (``HYDRA_FULL_ERROR=1`` shows the whole traceback).

What it does beyond ``hydra.main`` (the same as NeMo's ``nemo.core.config.hydra_runner``):

* ``main(cfg)`` with a config calls the function directly, without Hydra (``cfg_passthrough``).
* ``schema``: a structured-config dataclass registered in Hydra's ``ConfigStore`` under the config's name, so
  Hydra validates the YAML and every override against it (a key missing from the schema or a value of the wrong
  type is an error) and fills in the schema's defaults. The name is the one Hydra will load (``--config-name``
  when given), so that name must be a bare file name: put its folder in ``--config-path``. Hydra lets ``+key=v``
  add a key the schema does not declare; here that is an error too (``unknown key model_pat; did you mean
  model_path?``), raised before the task runs.
* Config errors read as one short message, with the closest known key. A ``nemofn.core.schema.ConfigError`` out
  of the task (the training scripts validate their whole config first) is printed as Hydra prints its own
  errors, without a traceback (``HYDRA_FULL_ERROR=1`` shows it); so are the errors whose message names the file,
  line or member and the fix: bad manifests and audio, refused ``.nemo`` archives, ``NonFiniteLossError``. An override of a key that is not in the config
  (``model.optimm.lr=0.1``: Hydra's "Could not override ... Key 'optimm' is not in struct") gets one more line,
  ``unknown key model.optimm; did you mean model.optim?``, as Hydra's message only suggests the ``+`` prefix.
* The OmegaConf resolvers ``${multiply:a,b}``, ``${sum:a,b}`` and ``${gpu_name:}`` (``"a100"`` / ``"h100"`` from
  the first GPU's compute capability 8 / 9 as NeMo does, else ``None``; also ``None`` without NVIDIA's ``pynvml``
  or without a driver) are registered when this module is imported.
* Hydra writes nothing by default. NeMo appends ``hydra.output_subdir=null hydra/job_logging=stdout
  hydra.run.dir=.`` to the command line, which also beats the user's own ``hydra.*`` overrides. Here the same three
  values are instead the *defaults* of Hydra's own config (``hydra/config`` in the ConfigStore, swapped in for the
  duration of the call only), so a ``hydra:`` section in the YAML and ``hydra.output_subdir=.hydra``,
  ``hydra.run.dir=outputs``, ``hydra/job_logging=default`` on the command line still win. Hence, unless asked:
  the working directory is never changed (``version_base="1.3"``: ``hydra.job.chdir`` defaults to false), no
  ``.hydra/`` folder, no ``<script>.log`` file, no ``outputs/`` folder.
* Multirun (``-m``): Hydra's basic sweeper always writes ``multirun.yaml`` into the sweep folder and the launcher
  makes one folder per job, which with the defaults above stay empty. The sweep folder defaults to Hydra's usual
  ``multirun/<date>/<time>`` (job ``N`` in ``.../N``); after the sweep, if that folder holds nothing but
  ``multirun.yaml`` and empty folders, it is removed together with the ``multirun/`` parents it leaves empty.
  So a plain ``-m`` run leaves no trace, while ``hydra.output_subdir=.hydra`` (per-job ``.hydra/``), a log file
  (``hydra/job_logging=default``) or anything the task writes into ``HydraConfig.get().runtime.output_dir`` keeps
  the whole sweep folder, in Hydra's usual layout. A sweep folder the user names (``hydra.sweep.dir=...``) is
  never touched. Jobs run in the caller's working directory, like single runs.

Return value: a single run returns what the task function returns (NeMo returns ``None``); ``--multirun``,
``--cfg``, ``--info`` and the rest return ``None``, as a launcher may run the jobs in other processes.

NeMo 3.0 also calls ``nemo.lightning.CallbackGroup.on_app_end()`` after the run; compat has no such group.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, ConfigCompositionException
from hydra.types import RunMode, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from nemofn.core.schema import ConfigError, closest_key, join_key

__all__ = ["hydra_runner"]

#: Hydra's behaviour version; 1.3 makes ``hydra.job.chdir`` default to false (the cwd is left alone).
HYDRA_VERSION_BASE = "1.3"
#: Where Hydra's own config (``hydra.conf.HydraConf``) lives in the ConfigStore.
_HYDRA_CONFIG_GROUP, _HYDRA_CONFIG_NAME = "hydra", "config"
#: The only file the basic sweeper writes by itself into the sweep folder.
_SWEEP_RECORD = "multirun.yaml"


# ----------------------------------------------------------------------------------------------------------------
# OmegaConf resolvers (NeMo registers these on import of its hydra_runner module)


def _gpu_name() -> str | None:
    """NeMo's ``${gpu_name:}``: ``"a100"`` / ``"h100"`` for compute capability 8 / 9 of GPU 0, else ``None``."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            major, _minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # pynvml installed, but no NVIDIA driver or no GPU
        return None
    return {8: "a100", 9: "h100"}.get(major)


OmegaConf.register_new_resolver("gpu_name", _gpu_name, replace=True)
OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("sum", lambda x, y: x + y, replace=True)


# ----------------------------------------------------------------------------------------------------------------
# Hydra's defaults


def _quiet_hydra_config(base: DictConfig, sweep_dir: str) -> DictConfig:
    """Hydra's own config with NeMo's defaults: no ``.hydra/``, logging to stdout only, run folder ``.``.

    Args:
        base: the ``hydra/config`` node Hydra registered (typed ``hydra.conf.HydraConf``); a copy is changed, so
            the result keeps its type checks (e.g. ``hydra.mode=MULTIRUN`` becomes a ``RunMode``).
        sweep_dir: the default multirun folder (relative to the working directory).

    Returns:
        The node to store as ``hydra/config``. Its own values are merged after its defaults list (so they beat
        ``hydra/output/default.yaml``) and before the primary config's ``hydra:`` section and the command line.
    """
    node = copy.deepcopy(base)
    defaults = list(node.defaults)
    slots = [i for i, entry in enumerate(defaults) if isinstance(entry, DictConfig) and "job_logging" in entry]
    if len(slots) != 1:
        raise RuntimeError(
            f"hydra_runner: Hydra {hydra.__version__}'s hydra/config has {len(slots)} 'job_logging' entries in its "
            "defaults list, expected 1; this Hydra version is outside the supported hydra-core>=1.3,<1.4"
        )
    defaults[slots[0]] = {"job_logging": "stdout"}
    node.defaults = defaults
    node.output_subdir = None
    node.run.dir = "."
    node.sweep.dir = sweep_dir
    node.sweep.subdir = "${hydra.job.num}"
    return node


@contextlib.contextmanager
def _hydra_defaults(sweep_dir: str) -> Iterator[None]:
    """Stores :func:`_quiet_hydra_config` as Hydra's ``hydra/config`` while the block runs, then puts Hydra's back.

    Hydra has no per-application hook for the defaults of its own config. Swapping this ConfigStore entry (public
    ``ConfigStore.load`` / ``store``; the entry is Hydra's typed ``hydra.conf.HydraConf``) keeps the user's YAML
    and command line in charge, which appending overrides to the command line as NeMo does cannot.
    """
    store = ConfigStore.instance()
    original = store.load(f"{_HYDRA_CONFIG_GROUP}/{_HYDRA_CONFIG_NAME}.yaml")
    store.store(
        group=_HYDRA_CONFIG_GROUP,
        name=_HYDRA_CONFIG_NAME,
        node=_quiet_hydra_config(original.node, sweep_dir),
        package=original.package,
        provider="compat.core.config.hydra_runner",
    )
    try:
        yield
    finally:
        store.store(
            group=_HYDRA_CONFIG_GROUP,
            name=_HYDRA_CONFIG_NAME,
            node=original.node,
            package=original.package,
            provider=original.provider,
        )


def _prune_bookkeeping_only_sweep(sweep_dir: Path, stop_at: Path) -> None:
    """Removes ``sweep_dir`` if Hydra left only ``multirun.yaml`` and empty folders there, plus emptied parents.

    Args:
        sweep_dir: absolute multirun folder this call chose (the user did not name one).
        stop_at: the working directory; parents are removed up to, not including, it.
    """
    if not sweep_dir.is_dir() or sweep_dir.is_symlink():
        return
    folders, content = [], []
    for root, dirs, names in os.walk(sweep_dir):
        folders.append(Path(root))
        content += [Path(root, name) for name in names]
        content += [Path(root, name) for name in dirs if Path(root, name).is_symlink()]
    if content != [sweep_dir / _SWEEP_RECORD]:
        return  # Hydra outputs were asked for, or the task wrote something: keep the whole sweep
    try:
        content[0].unlink()
        for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
            folder.rmdir()
        parent = sweep_dir.parent
        while parent != stop_at and stop_at in parent.parents:
            parent.rmdir()
            parent = parent.parent
    except OSError:
        pass  # something appeared meanwhile, or other sweeps share the parent: leave the rest as it is


# ----------------------------------------------------------------------------------------------------------------
# Schema


def _parse_hydra_command_line(argv: list[str]) -> argparse.Namespace:
    """Hydra's own parse of ``argv`` (``--config-name``, overrides, ...), exactly as ``hydra.main`` will see it.

    This is the one private Hydra API used here: Hydra has no public accessor for its command-line grammar, and a
    schema has to be registered under the config name Hydra will load *before* ``hydra.main`` composes it.
    ``get_args_parser()`` only builds an ``argparse`` parser (no side effects) and has kept this signature since
    Hydra 1.0; ``hydra.main`` itself calls it. Bad arguments exit with argparse's usage message (status 2), the same
    as Hydra would.
    """
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def _register_schema(schema: Any, config_name: str | None) -> None:
    """Stores ``schema`` in the ConfigStore under ``config_name`` (Hydra merges it with the YAML of that name)."""
    if config_name is None:
        sys.stderr.write(
            "ERROR hydra_runner(schema=...) needs a config name to validate: pass config_name= to hydra_runner or "
            "--config-name on the command line.\n"
        )
        sys.exit(1)
    folder, name = os.path.split(config_name)
    if folder:
        sys.stderr.write(
            f"ERROR Cannot validate config '{config_name}' against the schema: a schema is stored under a bare "
            f"config name. Give the folder with --config-path (-cp) and only the file name with --config-name "
            f"(e.g. -cp {folder} -cn {name}).\n"
        )
        sys.exit(1)
    ConfigStore.instance().store(name=name, node=schema)


@contextlib.contextmanager
def _schema_matching_allowed() -> Iterator[None]:
    """Silences Hydra's deprecation notice for a ConfigStore schema matched by name, which NeMo's API relies on.

    The notice asks the *application* to restructure its configs; a script's user cannot act on it. Hydra 1.3
    keeps the behaviour (it is removed in 1.4, outside ``hydra-core<1.4``), and
    ``HYDRA_DEPRECATION_WARNINGS_AS_ERRORS=1`` still turns it into an error.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*'.*' is validated against ConfigStore schema with the same")
        yield


# ----------------------------------------------------------------------------------------------------------------
# Config errors: one short message naming the key and the closest known one


class ConfigValidationError(CompactHydraException):
    """A config error out of a task run by Hydra; Hydra prints its message alone (no traceback) and exits 1."""


def _unknown_key_message(full_key: str, key: str, known: list[str]) -> str:
    parent = full_key[: -len(key) - 1] if full_key.endswith("." + key) else ""
    near = closest_key(key, known)
    if near is not None:
        return f"unknown key {full_key}; did you mean {join_key(parent, near)}?"
    return f"unknown key {full_key} ({parent or 'top-level'} keys: {', '.join(sorted(known))})"


def _undeclared_keys(node: Any, path: str = "") -> None:
    """Raises ``ConfigError`` for a key of a structured (dataclass-typed) node that its dataclass does not declare.

    Hydra's ``+key=value`` adds such keys (it opens the node); the schema's fields are the only keys a script reads.
    """
    if isinstance(node, DictConfig):
        if len(node) == 0:  # empty, ??? or null
            return
        kind = OmegaConf.get_type(node)
        declared = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None
        for key, value in node.items_ex(resolve=False):
            full = join_key(path, str(key))
            if declared is not None and key not in declared:
                raise ConfigError(_unknown_key_message(full, str(key), declared), key=full)
            _undeclared_keys(value, full)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):  # 0 for ??? and null
            if not OmegaConf.is_interpolation(node, i):
                _undeclared_keys(node[i], f"{path}[{i}]")


def _override_hint(error: BaseException | None) -> str | None:
    """For Hydra's failed override of a key that is not in the config: ``unknown key a.b; did you mean a.c?``."""
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) else None
    if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return None
    parent, key, full = cause.parent_node, cause.key, cause.full_key
    if not isinstance(parent, DictConfig) or not isinstance(key, str) or not full:
        return None
    known = [str(k) for k in parent.keys()]
    path = full[: -len(key) - 1] if full.endswith("." + key) else ""
    if path or any(section in parent for section in ("model", "trainer", "exp_manager")):  # a training config
        from compat.core.config.schemas import declared_keys  # the training scripts' schemas (error path only)

        declared = declared_keys(path, parent) or []
        if key in declared:
            return f"({full} is a valid key that this config leaves out: the + prefix adds it)"
        known += [k for k in declared if k not in known]
    return _unknown_key_message(full, key, known)


# ----------------------------------------------------------------------------------------------------------------
# The decorator


def _run_with_hydra(
    task_function: TaskFunction, config_path: str | None, config_name: str | None, schema: Any
) -> Any:
    """Runs ``task_function`` under ``hydra.main`` with the command line in ``sys.argv``; see the module docstring."""
    if schema is not None:
        cli_name = _parse_hydra_command_line(sys.argv[1:]).config_name
        _register_schema(schema, cli_name if cli_name is not None else config_name)

    single_run: list[Any] = []

    @functools.wraps(task_function)  # Hydra follows __wrapped__ to find the script (config_path is relative to it)
    def task(cfg: DictConfig) -> Any:
        try:
            if schema is not None:
                _undeclared_keys(cfg)
            value = task_function(cfg)
        except Exception as err:
            if not _reads_as_a_message(err):
                raise
            raise ConfigValidationError(f"{type(err).__name__}: {err}") from err
        if HydraConfig.get().mode == RunMode.RUN:
            single_run.append(value)
        return value

    cwd = Path.cwd()
    sweep_dir = time.strftime("multirun/%Y-%m-%d/%H-%M-%S")
    try:
        with _hydra_defaults(sweep_dir), _schema_matching_allowed():
            hydra.main(config_path=config_path, config_name=config_name, version_base=HYDRA_VERSION_BASE)(task)()
    except SystemExit as stop:
        # Hydra has printed its error and exits; the error it reported is the context of its SystemExit
        hint = _override_hint(stop.__context__) if stop.code == 1 else None
        if hint:
            sys.stderr.write(hint + "\n")
        raise
    finally:
        _prune_bookkeeping_only_sweep(cwd / sweep_dir, stop_at=cwd)
    return single_run[0] if len(single_run) == 1 else None


def _reads_as_a_message(err: Exception) -> bool:
    """Errors whose message says all a user needs (the key, file and line, or archive member, and the fix): printed
    without a traceback. Their modules are imported here, when one is raised, not when the script starts."""
    if isinstance(err, ConfigError):
        return True
    from compat.errors import NemoArchiveError
    from nemofn.asr.data.errors import AudioError, DataConfigError, ManifestError

    kinds: tuple[type, ...] = (NemoArchiveError, ManifestError, AudioError, DataConfigError)
    if "nemofn.train.skips" in sys.modules:  # only a training run can have raised it
        from nemofn.train.skips import NonFiniteLossError

        kinds += (NonFiniteLossError,)
    return isinstance(err, kinds)


def hydra_runner(
    config_path: str | None = ".", config_name: str | None = None, schema: Any | None = None
) -> Callable[[TaskFunction], Callable[..., Any]]:
    """Decorator that runs a script's ``main(cfg)`` with the config Hydra composes from the command line.

    Args:
        config_path: folder of the configs, relative to the decorated function's file (Hydra's rule), absolute, or
            ``pkg://package.path``; ``None`` adds no folder. ``--config-path`` / ``--config-dir`` override / add.
        config_name: config file name without ``.yaml``; ``--config-name`` overrides it.
        schema: optional structured-config dataclass the config is validated against (and takes defaults from).

    Returns:
        A decorator. The decorated ``main(cfg_passthrough=None)`` runs Hydra on ``sys.argv``, or with a config
        calls the function directly. It returns the function's value for a single run, else ``None``.
    """

    def decorator(task_function: TaskFunction) -> Callable[..., Any]:
        @functools.wraps(task_function)
        def wrapper(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is not None:
                return task_function(cfg_passthrough)
            return _run_with_hydra(task_function, config_path, config_name, schema)

        return wrapper

    return decorator
