"""Data-loader setup of :class:`~compat.core.classes.ModelPT` (NeMo's ``setup_*_data`` family).

NeMo's rules, minus the trainer dependence: ``setup_training_data`` defaults ``shuffle`` to true (validation and
test to false), stores the config back into ``cfg.<name>_ds``, and builds the loader; a ``manifest_filepath`` of
``None`` gives no loader (a warning, as NeMo). ``setup_multiple_validation_data`` / ``..._test_data`` build one
loader per manifest when ``manifest_filepath`` is a list of more than one file, named after the files
(``val_<stem>_``-style prefixes as NeMo's ``parse_dataset_as_name``); ``val_dl_idx`` picks the loader whose loss is
the primary ``val_loss``. Nothing here needs a trainer: with one attached, its ``num_devices * num_nodes`` and
``global_rank`` split the data across ranks.

The loader itself comes from :meth:`_setup_dataloader_from_config`, which by default calls the functional model's
``dataloader(ds_cfg)`` (``nemofn.asr.models.CTCModel.dataloader``); models override it for other data.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

__all__ = ["DataSetupMixin", "dataset_prefix"]

log = logging.getLogger("compat.models")

_DS_KEYS = {"train": "train_ds", "validation": "validation_ds", "test": "test_ds"}


def _as_config(config: Any, what: str) -> DictConfig:
    if isinstance(config, DictConfig):
        # resolved in place of the whole config it came from (``sample_rate: ${model.sample_rate}``), since the
        # copy kept in the model's config has no such root; MISSING values stay MISSING
        return OmegaConf.create(OmegaConf.to_container(config, resolve=True, throw_on_missing=False))
    if isinstance(config, dict):
        return OmegaConf.create(config)
    raise TypeError(f"{what} must be a DictConfig or a dict, got {type(config).__name__}")


def dataset_prefix(name: Any) -> str:
    """NeMo's ``parse_dataset_as_name``: a log prefix from a manifest path (``dev-clean.json`` -> ``dev_clean_``)."""
    text = Path(str(name)).stem if os.path.exists(str(name)) else str(name)
    text = text.replace("-", "_").replace("manifest", "").replace("dataset", "")
    if not text:
        raise ValueError(f"cannot name the data loader of {name!r}: a file called manifest.json / dataset.json gives "
                         "an empty name; give the manifests descriptive names, or set `name:` in the dataset config")
    return text if text.endswith("_") else text + "_"


class DataSetupMixin:
    """``setup_training_data`` / ``setup_validation_data`` / ``setup_test_data`` and their multi-loader forms."""

    _train_dl: Any
    _validation_dl: Any
    _test_dl: Any

    # -- the one hook -------------------------------------------------------------------------------------------

    def _setup_dataloader_from_config(self, config: DictConfig) -> Any:
        """Builds one loader from a dataset config; ``None`` when ``manifest_filepath`` is null.

        The default calls ``self.fn_model.dataloader(config, ...)``; override it for a model whose functional
        unit has no ``dataloader`` method.
        """
        if "manifest_filepath" in config and config.manifest_filepath is None:
            log.warning("manifest_filepath is null in %s: no data loader was built", dict(config))
            return None
        build = getattr(self.fn_model, "dataloader", None)
        if build is None:
            raise NotImplementedError(
                f"{type(self).__name__} cannot build data loaders: its functional model "
                f"({type(self.fn_model).__name__}) has no dataloader(ds_cfg) method; override "
                f"_setup_dataloader_from_config(config) in {type(self).__name__}"
            )
        kwargs: dict[str, Any] = {}
        if "path" in inspect.signature(build).parameters:
            kwargs["path"] = self.__dict__.get("_ds_path", "dataset")
        if self.world_size > 1:
            kwargs.update(num_replicas=self.world_size, rank=self.global_rank)
        return build(config, **kwargs)

    # -- config bookkeeping -------------------------------------------------------------------------------------

    def _update_dataset_config(self, dataset_name: str, config: Any) -> None:
        """Stores ``config`` as ``cfg.<dataset_name>_ds`` (NeMo preserves the last data config in the model)."""
        if config is None or getattr(self, "_multi_dataset_mode", False):
            return
        if dataset_name not in _DS_KEYS:
            raise ValueError(f"dataset_name must be one of {sorted(_DS_KEYS)}, got {dataset_name!r}")
        with open_dict(self._cfg):
            self._cfg[_DS_KEYS[dataset_name]] = _as_config(config, f"{dataset_name} data config")

    @staticmethod
    def _has_data_source(ds_cfg: Any) -> bool:
        """Whether the constructor sets this dataset up: a non-null ``manifest_filepath`` and no ``defer_setup``."""
        return (ds_cfg is not None and ds_cfg.get("manifest_filepath") is not None
                and not ds_cfg.get("defer_setup", False))

    def _auto_setup_data(self) -> None:
        """NeMo's constructor step: set up every ``*_ds`` that names its data and is not deferred."""
        cfg = self._cfg
        if self._has_data_source(cfg.get("train_ds")):
            self.setup_training_data(cfg.train_ds)
        if self._has_data_source(cfg.get("validation_ds")):
            self.setup_multiple_validation_data(cfg.validation_ds)
        if self._has_data_source(cfg.get("test_ds")):
            self.setup_multiple_test_data(cfg.test_ds)

    def setup(self, stage: str | None = None) -> None:
        """Runs the data setup that ``defer_setup: true`` postponed (``stage``: ``fit``, ``validate``, ``test``)."""
        cfg = self._cfg
        if stage in (None, "fit") and self._train_dl is None and cfg.get("train_ds") is not None \
                and cfg.train_ds.get("defer_setup", False):
            self.setup_training_data(cfg.train_ds)
        if stage in (None, "fit", "validate") and self._validation_dl is None \
                and cfg.get("validation_ds") is not None and cfg.validation_ds.get("defer_setup", False):
            self.setup_multiple_validation_data(cfg.validation_ds)
        if stage in (None, "test") and self._test_dl is None and cfg.get("test_ds") is not None \
                and cfg.test_ds.get("defer_setup", False):
            self.setup_multiple_test_data(cfg.test_ds)

    # -- single loaders -----------------------------------------------------------------------------------------

    def _setup_one(self, dataset_name: str, config: Any, shuffle_default: bool) -> Any:
        config = _as_config(config, f"{dataset_name} data config")
        if "shuffle" not in config:
            with open_dict(config):
                config.shuffle = shuffle_default
        self._update_dataset_config(dataset_name, config)
        self.__dict__["_ds_path"] = f"model.{_DS_KEYS[dataset_name]}"  # names the block in config errors
        try:
            return self._setup_dataloader_from_config(config)
        finally:
            self.__dict__.pop("_ds_path", None)

    def setup_training_data(self, train_data_config: DictConfig | dict) -> None:
        """Builds the training loader (``shuffle`` defaults to true) into ``self._train_dl``."""
        self._train_dl = self._setup_one("train", train_data_config, True)

    def setup_validation_data(self, val_data_config: DictConfig | dict) -> None:
        """Builds one validation loader (``shuffle`` defaults to false) into ``self._validation_dl``."""
        self._validation_dl = self._setup_one("validation", val_data_config, False)

    def setup_test_data(self, test_data_config: DictConfig | dict) -> None:
        """Builds one test loader (``shuffle`` defaults to false) into ``self._test_dl``."""
        self._test_dl = self._setup_one("test", test_data_config, False)

    # -- several loaders ----------------------------------------------------------------------------------------

    def _setup_multiple(self, dataset_name: str, config: Any, setup_one: Any) -> tuple[Any, list[str] | None, int]:
        config = _as_config(config, f"{dataset_name} data config")
        self._update_dataset_config(dataset_name, config)
        index_key = "val_dl_idx" if dataset_name == "validation" else "test_dl_idx"
        with open_dict(config):
            primary = int(config.pop(index_key, 0) or 0)
        manifests = config.get("manifest_filepath")
        self._multi_dataset_mode = True
        try:
            if not isinstance(manifests, (list, tuple, ListConfig)) or len(manifests) < 2:
                setup_one(config)
                return getattr(self, f"_{dataset_name}_dl"), None, primary
            names_cfg = config.get("name")
            loaders, names = [], []
            for i, manifest in enumerate(manifests):
                single = copy.deepcopy(config)
                with open_dict(single):
                    single.manifest_filepath = manifest
                    single.pop("name", None)
                setup_one(single)
                loaders.append(getattr(self, f"_{dataset_name}_dl"))
                given = names_cfg[i] if isinstance(names_cfg, (list, ListConfig)) and i < len(names_cfg) else None
                names.append(dataset_prefix(given if given is not None else manifest))
        finally:
            self._multi_dataset_mode = False
        if len(set(names)) != len(names):
            log.warning("several %s loaders share a name (%s); their logged metrics will collide", dataset_name, names)
        if not 0 <= primary < len(loaders):
            raise ValueError(f"{index_key}={primary} but there are {len(loaders)} {dataset_name} loaders")
        return loaders, names, primary

    def setup_multiple_validation_data(self, val_data_config: DictConfig | dict) -> None:
        """One validation loader per manifest when ``manifest_filepath`` lists several (else a single one)."""
        loaders, names, primary = self._setup_multiple("validation", val_data_config, self.setup_validation_data)
        self._validation_dl, self._validation_names, self._val_dl_idx = loaders, names, primary

    def setup_multiple_test_data(self, test_data_config: DictConfig | dict) -> None:
        """One test loader per manifest when ``manifest_filepath`` lists several (else a single one)."""
        loaders, names, primary = self._setup_multiple("test", test_data_config, self.setup_test_data)
        self._test_dl, self._test_names, self._test_dl_idx = loaders, names, primary

    # -- accessors (Lightning's names) --------------------------------------------------------------------------

    def train_dataloader(self) -> Any:
        return self._train_dl

    def val_dataloader(self) -> Any:
        return self._validation_dl if self._validation_dl is not None else []

    def test_dataloader(self) -> Any:
        return self._test_dl

    def get_validation_dataloader_prefix(self, dataloader_idx: int = 0) -> str:
        names = getattr(self, "_validation_names", None)
        return "" if not names else names[dataloader_idx]

    def get_test_dataloader_prefix(self, dataloader_idx: int = 0) -> str:
        names = getattr(self, "_test_names", None)
        return "" if not names else names[dataloader_idx]
