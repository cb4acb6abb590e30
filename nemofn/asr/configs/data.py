"""Schema of the ``train_ds`` / ``validation_ds`` / ``test_ds`` blocks: :class:`ASRDatasetConfig`.

Every key NeMo's ASR datasets know is a field (NeMo's ``ASRDatasetConfig`` and the keys its dataset builders
read). Plain fields are honoured by :func:`nemofn.asr.data.dataset.build_dataloader`; :func:`ignored` ones (tarred,
Lhotse, concat and bucketing options, fields NeMo's builders never read, keys NeMo's own code sets) have no effect
here; :func:`default_only` ones are accepted only at their default (``is_tarred: true`` or ``trim_silence: true``
raise, saying why). Errors are :class:`DatasetConfigError`, both a
:class:`~nemofn.core.schema.ConfigError` and a :class:`~nemofn.asr.data.errors.DataConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from nemofn.asr.data.errors import DataConfigError
from nemofn.core.schema import ConfigError, default_only, ignored, option

__all__ = ["ASRDatasetConfig", "DatasetConfigError"]


class DatasetConfigError(ConfigError, DataConfigError):
    """A dataset config block with an unknown key, a wrong type or an unsupported value."""


_TARRED = "a tarred (WebDataset) dataset option; nemofn reads plain manifests of audio files"
_LHOTSE = "a Lhotse dataloader option; nemofn has its own loader (bucketing: use_semi_sorted_batching)"
_CONCAT = "only read by NeMo's concat / code-switched datasets, which nemofn does not build"
_UNREAD = "a field of NeMo's ASRDatasetConfig that NeMo's dataset builders never read"
_SET_BY_NEMO = "set by NeMo's own transcribe / model code"


@dataclass
class ASRDatasetConfig:
    """A NeMo ASR dataset block. ``sample_rate`` and (char models) ``labels`` are filled from the model."""

    __config_error__ = DatasetConfigError

    # honoured
    manifest_filepath: Any = option(None, types=(str, List[str], None))
    sample_rate: Optional[int] = None
    batch_size: int = 32
    shuffle: bool = False
    num_workers: Optional[int] = 0
    pin_memory: bool = False
    drop_last: bool = False
    max_duration: Optional[float] = None
    min_duration: Optional[float] = None
    max_utts: int = 0
    channel_selector: Any = option(None, types=(int, str, List[int], None))
    int_values: Any = option(None, types=(bool, int, None))
    labels: Optional[List[str]] = None
    parser: Optional[str] = "en"
    normalize_transcripts: bool = False
    use_start_end_token: bool = True
    return_sample_id: Optional[bool] = False
    use_semi_sorted_batching: bool = False
    randomization_factor: Optional[float] = None
    semi_sort_sampler_seed: Optional[int] = None
    # nemofn's own (NeMo has neither): the up-front audio header check, and dropping bad lines instead of failing
    check_audio: bool = True
    skip_bad_samples: bool = False

    # accepted only at their default
    trim_silence: bool = default_only(False, reason="silence trimming (librosa.effects.trim in NeMo) is not "
                                                    "implemented; trim the audio beforehand")
    is_tarred: bool = default_only(False, reason="tarred (WebDataset) datasets are not supported; use plain "
                                                 "manifests of audio files")
    use_lhotse: bool = default_only(False, reason="the Lhotse dataloader is not supported; use plain manifests "
                                                  "(bucketing: use_semi_sorted_batching)")
    use_dali: bool = default_only(False, reason="DALI data loading is not supported")
    is_concat: bool = default_only(False, reason="concat datasets with sampling weights are not supported; list "
                                                 "the manifests in manifest_filepath to read them one after the "
                                                 "other")
    is_code_switched: bool = default_only(False, reason="code-switched datasets are not supported")
    augmentor: Optional[Any] = default_only(None, types=(dict, None), reason="audio augmentation (perturbations) "
                                            "is not supported; use spec_augment in the model")
    blank_index: int = default_only(-1, reason="only -1 (unknown characters are dropped) is supported")
    unk_index: int = default_only(-1, reason="only -1 (unknown characters are dropped) is supported")

    # tarred / WebDataset
    tarred_audio_filepaths: Optional[Any] = ignored(reason=_TARRED)
    tarred_shard_strategy: Optional[str] = ignored("scatter", reason=_TARRED)
    shard_strategy: Optional[str] = ignored(reason=_TARRED + " (an old spelling of tarred_shard_strategy)")
    shard_manifests: bool = ignored(False, reason=_TARRED)
    shuffle_n: Optional[int] = ignored(0, reason=_TARRED)
    tarred_random_access: bool = ignored(False, reason=_TARRED)
    tarred_audio_index_filepaths: Optional[Any] = ignored(reason=_TARRED)
    bucketing_strategy: Optional[str] = ignored("synced_randomized", reason=_TARRED)
    bucketing_batch_size: Optional[Any] = ignored(reason=_TARRED)
    bucketing_weights: Optional[Any] = ignored(reason=_TARRED)
    # Lhotse
    use_bucketing: bool = ignored(False, reason=_LHOTSE)
    batch_duration: Optional[Any] = ignored(reason=_LHOTSE)
    quadratic_duration: Optional[Any] = ignored(reason=_LHOTSE)
    bucket_batch_size: Optional[Any] = ignored(reason=_LHOTSE)
    bucket_duration_bins: Optional[Any] = ignored(reason=_LHOTSE)
    num_buckets: Optional[int] = ignored(0, reason=_LHOTSE)
    bucket_buffer_size: Optional[int] = ignored(reason=_LHOTSE)
    shuffle_buffer_size: Optional[int] = ignored(reason=_LHOTSE)
    max_open_streams: Optional[int] = ignored(reason=_LHOTSE)
    force_finite: Optional[bool] = ignored(reason=_LHOTSE)
    # concat / code-switched
    concat_sampling_technique: Optional[str] = ignored(reason=_CONCAT)
    concat_sampling_temperature: Optional[float] = ignored(reason=_CONCAT)
    concat_sampling_scale: Optional[float] = ignored(reason=_CONCAT)
    concat_sampling_probabilities: Optional[Any] = ignored(reason=_CONCAT)
    concat_shuffle: Optional[bool] = ignored(reason=_CONCAT)
    concat_sampling_seed: Optional[int] = ignored(reason=_CONCAT)
    code_switched: Optional[Any] = ignored(reason=_CONCAT)
    # fields of NeMo's ASRDatasetConfig that its builders never read
    normalize: Optional[bool] = ignored(False, reason=_UNREAD)
    trim: Optional[bool] = ignored(True, reason=_UNREAD)
    eos_id: Optional[int] = ignored(reason=_UNREAD)
    bos_id: Optional[int] = ignored(reason=_UNREAD)
    pad_id: Optional[int] = ignored(0, reason=_UNREAD)
    manifest_parse_func: Optional[Any] = ignored(reason=_UNREAD)
    # set by NeMo's code
    defer_setup: Optional[bool] = ignored(reason=_SET_BY_NEMO)
    do_transcribe: Optional[bool] = ignored(reason=_SET_BY_NEMO)
    global_rank: Optional[int] = ignored(reason=_SET_BY_NEMO)
    world_size: Optional[int] = ignored(reason=_SET_BY_NEMO)
    temp_dir: Optional[str] = ignored(reason=_SET_BY_NEMO)
    paths2audio_files: Optional[Any] = ignored(reason=_SET_BY_NEMO)
