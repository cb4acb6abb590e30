"""``ModelPT``: NeMo's model base class, an ``nn.Module`` over a functional model and its explicit state.

A ``ModelPT`` holds three things:

* ``cfg``: the model-level config (NeMo's ``target`` / ``_target_`` class paths, ``nemo_version`` injected);
* ``fn_model``: the functional *model unit* built from it by :meth:`build_functional` (for ASR a
  :class:`nemofn.asr.models.ctc_model.CTCModel`): ``init_state(rng) -> ModelState``, an ``objective`` (or
  ``network.objective``) and optionally ``dataloader(ds_cfg)``;
* ``fn_state``: its :class:`~nemofn.core.state.ModelState` (params and buffers, NeMo's state-dict keys), whose
  tensors this ``nn.Module`` registers as its own (no copies): ``model.parameters()``, ``model.state_dict()``,
  ``model.encoder`` and ``model.to(device)`` all act on them.

NeMo's concerns each live in one file: the ``nn.Module`` face, submodules and freezing
(:mod:`compat.models.modelpt_module`), data setup (:mod:`compat.models.modelpt_data`), optimization
(:mod:`compat.models.modelpt_optim`), the LightningModule hooks ``compat.Trainer`` calls
(:mod:`compat.models.modelpt_steps`) and partial initialisation (:mod:`compat.models.modelpt_init`). This file has
construction, configs, the trainer link, ``.nemo`` save / restore and artifacts.

Training goes through ``compat.Trainer`` (``trainer.fit(model)``), as in NeMo. The way out, from a ``.nemo`` straight
into a custom loop::

    model = EncDecCTCModel.restore_from("qn.nemo")
    fn, state = model.functional                      # CTCModel, ModelState (same tensors as the model's)
    optimizer, schedule, _ = fn.optimization(max_steps=1000)
    train_state = TrainState.create(state, optimizer, rng=0)
    step = StepConfig(fn.network.objective, optimizer, schedule)
    for batch in fn.dataloader(model.cfg.train_ds):
        train_state, metrics = train_step(train_state, batch, step)
    model.save_to("tuned.nemo")                        # the updates were made in place: the model sees them

Your own model: subclass, name its NeMo-style target, and build the unit::

    class MyModel(ModelPT, nemo_target="nemo.collections.asr.models.MyModel"):
        def build_functional(self, cfg):
            return MyUnit.from_config(cfg)             # init_state, objective, dataloader

``save_to``, ``restore_from``, ``setup_optimization``, ``trainer.fit`` and the data setup then work unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from compat.archive import DEFAULT_NEMO_VERSION, maybe_update_config_version
from compat.artifacts import current_restore_archive
from compat.core.connectors.save_restore_connector import SaveRestoreConnector, planned_state_guard
from compat.errors import MissingTargetError, NemoFileNotFoundError, UnknownTargetError
from nemofn.core.rng import RngKey
from compat.models.modelpt_data import DataSetupMixin
from compat.models.modelpt_init import InitFromCheckpointMixin
from compat.models.modelpt_module import IncompatibleKeys, ModelSummary, ModuleFace, StateDictMismatchError
from compat.models.modelpt_optim import OptimizationMixin
from compat.models.modelpt_steps import LightningSteps
from compat.registry import (
    build_module,
    builder_path,
    nemo_target_for,
    register_model_target,
    resolve_target,
    supported_targets,
)

__all__ = ["ModelPT", "StateDictMismatchError", "ModelSummary", "IncompatibleKeys"]

log = logging.getLogger("compat.models")

#: True while ``restore_from`` builds a model (the constructor then skips NeMo's automatic data setup). A context
#: variable, so that restores in other threads or nested calls never see each other's flag.
_BEING_RESTORED: contextvars.ContextVar[bool] = contextvars.ContextVar("compat_model_being_restored", default=False)


def _as_model_config(cfg: Any) -> DictConfig:
    """A resolved, Hydra-1.x, struct-mode ``DictConfig`` copy of a model config (dict / dataclass / DictConfig)."""
    if cfg is None:
        raise ValueError("a model needs a config (the `model:` block); got None")
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg) if attrs.has(type(cfg)) or hasattr(cfg, "__dataclass_fields__") \
            else OmegaConf.create(dict(cfg) if isinstance(cfg, Mapping) else cfg)
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"a model config must be a mapping, got {type(cfg).__name__}")
    cfg = maybe_update_config_version(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    if "model" in cfg:
        raise ValueError("the config has a top-level `model` key: pass cfg.model (the model-level block), as NeMo "
                         "requires")
    return cfg


def _python_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _target_of(cls: type) -> str:
    """The ``target`` NeMo would write: the nearest declared ``nemo_target``, else a registered path, else the
    class's Python path (which ``save_to`` refuses, as NeMo 3.0 would refuse to load it)."""
    for klass in cls.__mro__:
        if "_nemo_target" in klass.__dict__:
            return klass.__dict__["_nemo_target"]
    try:
        return nemo_target_for(cls, search_bases=True)
    except UnknownTargetError:
        return _python_path(cls)


def _registered_to(target: str, cls: type) -> bool:
    """Whether ``target`` already names ``cls`` (directly, or as compat's lazy ``compat.*:<Class>`` re-export)."""
    try:
        path = builder_path(target)
    except UnknownTargetError:
        return False
    module, _, qualname = path.partition(":")
    return path == f"{cls.__module__}:{cls.__qualname__}" or (module.startswith("compat.")
                                                               and qualname == cls.__qualname__)


class ModelPT(ModuleFace, DataSetupMixin, OptimizationMixin, LightningSteps, InitFromCheckpointMixin, nn.Module):
    """NeMo's ``ModelPT``: an ``nn.Module`` over a functional model unit and its :class:`ModelState`.

    Subclasses implement :meth:`build_functional` and may override :meth:`submodule_specs` (NeMo's submodules),
    the steps (``training_step``, ``validation_step``, ...) and :meth:`_setup_dataloader_from_config`. Declare the
    NeMo class path written into ``cfg.target`` with ``class MyModel(ModelPT, nemo_target="nemo.collections....")``,
    which registers the class for ``restore_from``. Do not override ``__init__``; build everything in
    :meth:`build_functional`.

    Args:
        cfg: the model-level config (``DictConfig``, dict or dataclass).
        trainer: optional trainer (``compat.Trainer``, or any object with the attributes
            :meth:`setup_optimization` reads).
    """

    _save_restore_connector: SaveRestoreConnector = SaveRestoreConnector()

    def __init_subclass__(cls, *, nemo_target: str | None = None, nemo_aliases: tuple[str, ...] = (), **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if nemo_target is None:
            return
        cls._nemo_target = nemo_target
        if not _registered_to(nemo_target, cls):
            register_model_target(nemo_target, cls, aliases=nemo_aliases)

    def __init__(self, cfg: Any, trainer: Any = None) -> None:
        nn.Module.__init__(self)
        self._setup_model(cfg, trainer)

    def _setup_model(self, cfg: Any, trainer: Any, *, state: Any = None, unit: Any = None) -> None:
        cfg = _as_model_config(cfg)
        with open_dict(cfg):
            if "target" not in cfg:
                cfg.target = _target_of(type(self))
            if cfg.get("nemo_version") is None:
                cfg.nemo_version = DEFAULT_NEMO_VERSION
        self._cfg = cfg
        self.artifacts: dict[str, Any] = {}
        self.restoration_path: str | None = None
        self._save_restore_connector = SaveRestoreConnector()
        self._train_dl = self._validation_dl = self._test_dl = None
        self._validation_names = self._test_names = None
        self._val_dl_idx = self._test_dl_idx = 0
        self._optimizer = self._scheduler = None
        self.validation_step_outputs: list = []
        self.test_step_outputs: list = []
        self._trainer = None
        self.set_trainer(trainer)
        built = self.build_functional(self._cfg)
        self._fn_model = unit if unit is not None else built
        if state is None:
            seed = self._draw_seed()
            self._check_planned_state(seed)
            state = self._fn_model.init_state(seed)
        self._bind_state(state)
        if not self._is_model_being_restored():
            self._auto_setup_data()

    # -- the functional model (the way out) ---------------------------------------------------------------------

    def build_functional(self, cfg: DictConfig) -> Any:
        """Builds the functional model unit from ``cfg`` (subclasses implement it).

        It may call :meth:`register_artifact` and edit ``cfg`` (under ``open_dict``), as NeMo constructors do.
        """
        raise NotImplementedError(f"{type(self).__name__}.build_functional(cfg) is not implemented: return the "
                                  "functional model unit (init_state, objective, optional dataloader)")

    @property
    def fn_model(self) -> Any:
        """The functional model unit (e.g. ``nemofn.asr.models.ctc_model.CTCModel``)."""
        return self._fn_model

    @property
    def fn_state(self) -> Any:
        """The :class:`~nemofn.core.state.ModelState`: params and buffers with NeMo's state-dict keys."""
        return self._fn_state

    @property
    def functional(self) -> tuple[Any, Any]:
        """``(fn_model, fn_state)``: the functional model and its state, for ``nemofn.train`` loops.

        The state's tensors are the model's own: training them in place updates this model.
        """
        return self._fn_model, self._fn_state

    def _replace_functional(self, unit: Any, state: Any = None) -> None:
        """Swaps in a rebuilt unit, and for vocabulary changes a new state (its tensors are registered anew).

        With the same state (a new decoding temperature, say) the submodules keep their tensors and modes.
        """
        self._fn_model = unit
        if state is None or state is self._fn_state:
            self._refresh_specs()
        else:
            self._bind_state(state)

    @classmethod
    def from_functional(cls, model: Any, state: Any, *, cfg: Any = None, trainer: Any = None) -> ModelPT:
        """Wraps a functional model and its state (e.g. trained with ``nemofn.train``) as this class.

        Args:
            model: the unit (its ``cfg`` is used unless ``cfg`` is given).
            state: its :class:`ModelState` (kept as is: no copy, no re-initialisation).
            cfg: the model config; artifacts (tokenizer files) are registered from it as the constructor does.
        """
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj._setup_model(cfg if cfg is not None else model.cfg, trainer, state=state, unit=model)
        return obj

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Runs the unit's network (``fn_model.network`` or the unit itself) on ``inputs`` in the model's mode.

        Training mode writes new buffers (BatchNorm statistics) back into the state. The ASR models override this
        with NeMo's forward, composed of their submodules.
        """
        from nemofn.core.tree import tree_copy_

        network = getattr(self._fn_model, "network", self._fn_model)
        state = self._fn_state
        outputs, new_buffers = network.apply(state.params, state.buffers, *inputs, train=self.training,
                                             rng=RngKey(0) if self.training else None, **kwargs)
        if self.training and state.buffers:
            with torch.no_grad():
                tree_copy_(state.buffers, new_buffers)
        return outputs

    # -- config -------------------------------------------------------------------------------------------------

    @property
    def cfg(self) -> DictConfig:
        """The model config (live artifact keys hold local paths; ``save_to`` writes ``nemo:`` values)."""
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: DictConfig) -> None:
        self._cfg = cfg

    @property
    def hparams(self) -> DictConfig:
        return OmegaConf.create({"cfg": self._cfg})

    def to_config_dict(self) -> DictConfig:
        """A resolved copy of the model config."""
        return OmegaConf.create(OmegaConf.to_container(self._cfg, resolve=True))

    @classmethod
    def from_config_dict(cls, config: Any, trainer: Any = None) -> Any:
        """Builds what ``config`` describes: a model (``target``), a nemofn module (``_target_``), or ``cls``.

        A ``target`` resolves through :mod:`compat.registry`; when ``cls`` is a subclass of that class, ``cls`` is
        used (NeMo's rule), so ``ModelPT.restore_from`` returns the class the archive names.
        """
        config = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
        if "_target_" in config or ("cls" in config and "params" in config):
            return build_module(maybe_update_config_version(config))
        if "target" in config:
            target_cls = cls._class_for_target(config["target"])
        elif cls.build_functional is ModelPT.build_functional:  # an abstract base: it cannot build anything itself
            raise MissingTargetError(cls.__name__, list(config.keys()))
        else:
            target_cls = cls
        return target_cls(cfg=config, trainer=trainer)

    @classmethod
    def _class_for_target(cls, target: str) -> type:
        if target == _python_path(cls):
            return cls
        try:
            found = resolve_target(target, kind="model")
        except UnknownTargetError as exc:
            raise UnknownTargetError(
                target, supported_targets("model"), f"compat has no model class for target {target!r}. Supported model "
                f"targets are those registered with compat.registry.register_model_target (see compat.registry.supported_targets("
                f"'model')); for your own model declare `class M(ModelPT, nemo_target={target!r})`, or restore with "
                f"override_config_path naming a supported target."
            ) from exc
        if not (isinstance(found, type) and issubclass(found, ModelPT)):
            raise TypeError(f"target {target!r} resolves to {found!r}, which is not a ModelPT subclass")
        return cls if issubclass(cls, found) else found

    # -- trainer ------------------------------------------------------------------------------------------------

    @property
    def trainer(self) -> Any:
        return self._trainer

    def set_trainer(self, trainer: Any) -> None:
        """Attaches a trainer-like object (``num_devices * num_nodes`` sets :attr:`world_size`)."""
        self._trainer = trainer
        self.world_size = 1
        if trainer is not None:
            devices, nodes = getattr(trainer, "num_devices", 1), getattr(trainer, "num_nodes", 1)
            if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 and nodes > 0:
                self.world_size = devices * nodes

    @property
    def global_rank(self) -> int:
        return int(getattr(self._trainer, "global_rank", 0) or 0)

    @staticmethod
    def _draw_seed() -> int:
        """A seed from torch's global generator, so ``torch.manual_seed`` / ``seed_everything`` govern new weights."""
        return int(torch.randint(0, 2**31 - 1, (1,)).item())

    # -- restore / save -----------------------------------------------------------------------------------------

    @staticmethod
    def _is_model_being_restored() -> bool:
        return _BEING_RESTORED.get() or current_restore_archive() is not None

    @staticmethod
    def _set_model_restore_state(is_being_restored: bool, folder: str | None = None) -> None:
        """NeMo's switch, kept for connectors that call it; prefer the :meth:`_being_restored` block."""
        _BEING_RESTORED.set(bool(is_being_restored))

    @staticmethod
    @contextlib.contextmanager
    def _being_restored() -> Iterator[None]:
        token = _BEING_RESTORED.set(True)
        try:
            yield
        finally:
            _BEING_RESTORED.reset(token)

    def _check_planned_state(self, seed: int) -> None:
        """While restoring: the tensors ``init_state`` would allocate, planned on the ``meta`` device (no memory),
        checked against the archive's weights (:func:`planned_state_guard`), so a config that does not fit its
        weights (``filters: 20000000``) fails before allocating. Skipped for a class whose ``load_state_dict`` is its
        own (it may map keys differently) and, with a warning, when the unit cannot be planned on ``meta``."""
        guard = planned_state_guard()
        if guard is None or type(self).load_state_dict is not ModuleFace.load_state_dict:
            return
        try:
            with torch.device("meta"):
                planned = self._fn_model.init_state(seed).state_dict()
        except Exception as exc:  # noqa: BLE001 - any failure only means the check happens on loading instead
            log.warning("could not plan %s's tensors on the meta device (%s: %s); its weights' shapes are checked "
                        "when they are loaded", type(self).__name__, type(exc).__name__, exc)
            return
        guard(planned)

    @classmethod
    def update_save_restore_connector(cls, save_restore_connector: SaveRestoreConnector) -> None:
        cls._save_restore_connector = save_restore_connector

    @classmethod
    def restore_from(cls, restore_path: str, override_config_path: Any = None, map_location: Any = None,
                     strict: bool = True, return_config: bool = False, save_restore_connector: Any = None,
                     trainer: Any = None, validate_access_integrity: bool = True, *,
                     allow_non_finite: bool | None = None, max_member_bytes: int | str | None = None,
                     max_total_bytes: int | str | None = None) -> Any:
        """Restores a model from a ``.nemo`` file (or an unpacked folder); returns the class its ``target`` names.

        An untrusted archive is refused, with a named error, before anything is built from it: unsafe or oversized
        members, YAML bombs, bad interpolations, weights that are not plain finite tensors, and a config whose
        tensors do not fit the weights (checked on the ``meta`` device, before allocating).

        Args:
            restore_path: the ``.nemo`` (``~`` expanded).
            override_config_path: a YAML path or config replacing the archive's (an outer ``model:`` is stripped).
            map_location: device of the weights (default: CUDA when available, else CPU).
            strict: missing / unexpected keys raise :class:`~compat.errors.WeightKeysError`, and shape mismatches
                (with any ``strict``) :class:`~compat.errors.WeightShapeError`, both found before the model's tensors
                are allocated (:class:`StateDictMismatchError` on loading, for a class with its own
                ``load_state_dict``); all are ``RuntimeError``, as in NeMo.
            return_config: return only the config (``DictConfig``).
            save_restore_connector: a (subclassed) :class:`SaveRestoreConnector`.
            trainer: passed to the model's constructor.
            allow_non_finite: (keyword-only, nemofn) load weights holding NaN / Inf, for inspection; default
                ``None``: refused with :class:`~compat.errors.NonFiniteWeightsError` unless
                ``NEMOFN_ALLOW_NON_FINITE_WEIGHTS=1``.
            max_member_bytes / max_total_bytes: (keyword-only, nemofn) extraction limits in bytes or ``"512MiB"``;
                default ``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES``, else 8 GiB per member and 16 GiB
                in all (:class:`~compat.errors.ArchiveTooLargeError`).
        """
        connector = save_restore_connector if save_restore_connector is not None else SaveRestoreConnector()
        extracted = connector.model_extracted_dir
        if extracted is not None and os.path.isdir(extracted):
            path = os.path.abspath(extracted)
        else:
            path = os.path.abspath(os.path.expanduser(os.fspath(restore_path)))
            if not os.path.exists(path):
                raise NemoFileNotFoundError(path)
        cls.update_save_restore_connector(connector)
        options = dict(allow_non_finite=allow_non_finite, max_member_bytes=max_member_bytes,
                       max_total_bytes=max_total_bytes)
        options = {key: value for key, value in options.items() if value is not None}  # NeMo-shaped connectors
        with cls._being_restored():
            instance = connector.restore_from(cls, path, override_config_path, map_location, strict, return_config,
                                              trainer, validate_access_integrity, **options)
        if isinstance(instance, ModelPT):
            instance._save_restore_connector = connector
            instance.restoration_path = path
        return instance

    def save_to(self, save_path: str) -> str | None:
        """Writes a ``.nemo`` that real NeMo 3.0 restores (config, weights with NeMo keys, artifacts)."""
        path = os.path.abspath(os.path.expanduser(os.fspath(save_path)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return self._save_restore_connector.save_to(self, path)

    @classmethod
    def extract_state_dict_from(cls, restore_path: str, save_dir: str, split_by_module: bool = False,
                                save_restore_connector: Any = None) -> dict:
        """Writes the weights of a ``.nemo`` to ``save_dir`` (``model_weights.ckpt`` or one file per module)."""
        connector = save_restore_connector if save_restore_connector is not None else SaveRestoreConnector()
        return connector.extract_state_dict_from(restore_path, save_dir, split_by_module)

    @classmethod
    def from_pretrained(cls, model_name: str, refresh_cache: bool = False, override_config_path: Any = None,
                        map_location: Any = None, strict: bool = True, return_config: bool = False,
                        trainer: Any = None, save_restore_connector: Any = None,
                        return_model_file: bool = False) -> Any:
        """Restores a model by name from a local file or cache folder (no downloads; see :mod:`compat.pretrained`).

        ``refresh_cache`` is accepted for NeMo compatibility and has no effect.
        """
        from compat.pretrained import resolve_pretrained

        path = resolve_pretrained(model_name)
        if return_model_file:
            return path
        connector = save_restore_connector if save_restore_connector is not None else SaveRestoreConnector()
        if os.path.isdir(path):
            connector.model_extracted_dir = path
        return cls.restore_from(path, override_config_path=override_config_path, map_location=map_location,
                                strict=strict, return_config=return_config, trainer=trainer,
                                save_restore_connector=connector)

    @classmethod
    def list_available_models(cls) -> list[Any]:
        """The ``.nemo`` files found in the local cache folders (:func:`compat.pretrained.list_local_models`)."""
        from compat.pretrained import list_local_models

        return list_local_models(cls)

    @classmethod
    def get_available_model_names(cls) -> list[str]:
        return [info.pretrained_model_name for info in cls.list_available_models()]

    # -- artifacts ----------------------------------------------------------------------------------------------

    def register_artifact(self, config_path: str, src: str, verify_src_exists: bool = True) -> str | None:
        """Records a file the model needs (stored in the ``.nemo`` on save) and returns a local path to it."""
        if src is None or src == "":
            return src
        if str(src).endswith(".nemo"):
            raise ValueError(f"register_artifact({config_path!r}, {src!r}): nested .nemo models are not supported by "
                             "compat (NeMo uses register_nemo_submodule for them)")
        return self._save_restore_connector.register_artifact(self, config_path, src, verify_src_exists)

    def has_artifacts(self) -> bool:
        return bool(self.artifacts)

    def has_nemo_submodules(self) -> bool:
        return False
