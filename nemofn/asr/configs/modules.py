"""Schemas of the module config blocks: ``preprocessor``, ``spec_augment``, ``encoder`` (ConvASR / Conformer and
FastConformer) with its ``jasper`` block list, ``decoder`` (the CTC head, or a transducer's prediction network with
its ``prednet`` block) and ``joint`` (with its ``jointnet`` block).

Each schema's fields (less ``_target_``) and defaults are exactly the constructor arguments of the nemofn module it
configures (a test keeps them so), which take NeMo's constructor arguments and defaults. The transducer blocks
(``RNNTDecoder``, ``RNNTJoint``) keep NeMo's nesting (``prednet: {...}``, ``jointnet: {...}``), which their modules'
``from_config`` flattens; their fields are NeMo's constructor arguments and the keys NeMo reads from the nested
blocks, with NeMo's defaults. Where NeMo's own config dataclass differs from its constructor (e.g.
``SpectrogramAugmentationConfig.freq_width = 0`` against the constructor's 10), the constructor wins: a block that
leaves a key out gets the constructor's value in NeMo too.

:func:`module_schema` picks the schema a block's ``_target_`` names; :func:`select_module` makes the selector of a
model-config slot (which modules may stand there).

Sizes and counts are :func:`~nemofn.core.schema.positive` / :func:`~nemofn.core.schema.non_negative` fields, so a
negative or zero size (``filters: -5``) is a ``ConfigError`` naming its key before any module is built; NeMo's
``-1`` ("unset", "filled by the model") stays valid where NeMo uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, List, Optional

from nemofn.core.schema import MAX_LAYERS, MISSING, ConfigError, join_key, non_negative, option, positive

__all__ = [
    "AudioToMelSpectrogramPreprocessorConfig", "SpectrogramAugmentationConfig", "JasperEncoderConfig",
    "ConvASREncoderConfig", "ConformerEncoderConfig", "ConvASRDecoderConfig", "RNNTPredNetConfig", "RNNTDecoderConfig",
    "RNNTJointNetConfig", "RNNTJointConfig", "RNNT_JOINT_ACTIVATIONS", "MODULE_SCHEMAS", "module_schema",
    "select_module", "NEMO_MODULES",
]

NEMO_MODULES = "nemo.collections.asr.modules"


@dataclass
class AudioToMelSpectrogramPreprocessorConfig:
    """``preprocessor:`` of :class:`~nemofn.asr.modules.preprocessor.AudioToMelSpectrogramPreprocessor`."""

    _target_: str = f"{NEMO_MODULES}.AudioToMelSpectrogramPreprocessor"
    sample_rate: int = positive(16000)
    window_size: Optional[float] = positive(0.02)
    window_stride: Optional[float] = positive(0.01)
    n_window_size: Optional[int] = positive(None)
    n_window_stride: Optional[int] = positive(None)
    window: Optional[str] = "hann"
    normalize: Any = option("per_feature", types=(str, dict, bool, None))
    n_fft: Optional[int] = positive(None)
    preemph: Optional[float] = 0.97
    features: int = positive(64)
    lowfreq: float = non_negative(0)
    highfreq: Optional[float] = None
    log: bool = True
    log_zero_guard_type: str = option("add", choices=("add", "clamp"))
    log_zero_guard_value: Any = option(2**-24, types=(float, str))
    dither: float = non_negative(1e-5)
    pad_to: Any = non_negative(16, types=(int, str))
    frame_splicing: int = positive(1)
    exact_pad: bool = False
    pad_value: float = 0.0
    mag_power: float = 2.0
    rng: Optional[Any] = None
    nb_augmentation_prob: float = 0.0
    nb_max_freq: float = 4000
    use_torchaudio: bool = False
    mel_norm: Any = option("slaney", types=(str, float, None))
    stft_exact_pad: bool = False
    stft_conv: bool = False


@dataclass
class SpectrogramAugmentationConfig:
    """``spec_augment:`` of :class:`~nemofn.asr.modules.spec_augment.SpectrogramAugmentation`."""

    _target_: str = f"{NEMO_MODULES}.SpectrogramAugmentation"
    freq_masks: int = non_negative(0)
    time_masks: int = non_negative(0)
    freq_width: int = non_negative(10)
    time_width: Any = non_negative(10, types=(int, float))
    rect_masks: int = non_negative(0)
    rect_time: int = non_negative(5)
    rect_freq: int = non_negative(20)
    mask_value: float = 0.0
    use_vectorized_spec_augment: bool = True
    use_numba_spec_augment: bool = False
    rng: Optional[Any] = None


@dataclass
class JasperEncoderConfig:
    """One entry of ``encoder.jasper`` (NeMo's name; :class:`~nemofn.asr.modules.conv_asr.JasperBlockConfig`).

    ``kernel``, ``stride`` and ``dilation`` are 1-element lists in NeMo's configs (an int is accepted too);
    ``residual_mode: null`` takes the encoder's.
    """

    filters: int = positive()
    repeat: int = positive(maximum=MAX_LAYERS)
    kernel: Any = positive(types=(List[int], int))
    stride: Any = positive(types=(List[int], int))
    dilation: Any = positive(types=(List[int], int))
    dropout: float = MISSING
    residual: bool = MISSING
    groups: int = positive(1)
    separable: bool = False
    heads: int = positive(-1, sentinels=(-1,))
    residual_mode: Optional[str] = None
    residual_dense: bool = False
    se: bool = False
    se_reduction_ratio: int = positive(8)
    se_context_size: int = positive(-1, sentinels=(-1,))
    se_interpolation_mode: str = "nearest"
    kernel_size_factor: float = positive(1.0)
    stride_last: bool = False
    future_context: int = non_negative(-1, sentinels=(-1,))


@dataclass
class ConvASREncoderConfig:
    """``encoder:`` of :class:`~nemofn.asr.modules.conv_asr.ConvASREncoder` (Jasper, QuartzNet, Citrinet)."""

    _target_: str = f"{NEMO_MODULES}.ConvASREncoder"
    jasper: List[JasperEncoderConfig] = MISSING
    activation: str = MISSING
    feat_in: int = positive()
    normalization_mode: str = "batch"
    residual_mode: str = "add"
    norm_groups: int = positive(-1, sentinels=(-1,))
    conv_mask: bool = True
    frame_splicing: int = positive(1)
    init_mode: Optional[str] = "xavier_uniform"
    quantize: bool = False


@dataclass
class ConformerEncoderConfig:
    """``encoder:`` of :class:`~nemofn.asr.modules.conformer.ConformerEncoder` (Conformer and FastConformer:
    ``subsampling: dw_striding``, ``subsampling_factor: 8``, ``subsampling_conv_channels``, ``conv_kernel_size: 9``).
    """

    _target_: str = f"{NEMO_MODULES}.ConformerEncoder"
    feat_in: int = positive()
    n_layers: int = non_negative(maximum=MAX_LAYERS)
    d_model: int = positive()
    feat_out: int = positive(-1, sentinels=(-1,))
    causal_downsampling: bool = False
    subsampling: Optional[str] = "striding"
    subsampling_factor: int = positive(4)
    subsampling_conv_chunking_factor: int = positive(1, sentinels=(-1,))  # 1 auto, -1 never, a power of 2 n: n chunks
    subsampling_conv_channels: int = positive(-1, sentinels=(-1,))
    reduction: Optional[str] = None
    reduction_position: Optional[int] = None
    reduction_factor: int = positive(1)
    ff_expansion_factor: int = positive(4)
    self_attention_model: str = "rel_pos"  # rel_pos, rel_pos_local_attn (long audio; needs att_context_size), abs_pos
    n_heads: int = positive(4)
    att_context_size: Optional[List[Any]] = None  # [left, right], or a list of such pairs
    att_context_probs: Optional[List[float]] = None
    att_context_style: str = "regular"
    att_chunk_context_size: Optional[List[Any]] = None
    xscaling: bool = True
    untie_biases: bool = True
    pos_emb_max_len: int = positive(5000)
    conv_kernel_size: int = positive(31)
    conv_norm_type: str = "batch_norm"
    conv_context_size: Any = option(None, types=(List[int], str, None))
    conv_context_style: str = "regular"
    use_bias: bool = True
    dropout: float = 0.1
    dropout_pre_encoder: float = 0.1
    dropout_emb: float = 0.1
    dropout_att: float = 0.0
    stochastic_depth_drop_prob: float = 0.0
    stochastic_depth_mode: str = "linear"
    stochastic_depth_start_layer: int = 1
    global_tokens: int = non_negative(0)  # global_*: rel_pos_local_attn only
    global_tokens_spacing: int = positive(1)
    global_attn_separate: bool = False
    use_pytorch_sdpa: bool = False
    use_pytorch_sdpa_backends: Optional[List[str]] = None
    sync_max_audio_length: bool = True


@dataclass
class ConvASRDecoderConfig:
    """``decoder:`` of :class:`~nemofn.asr.modules.decoder.ConvASRDecoder` (the CTC head).

    ``feat_in: null`` and ``num_classes: -1`` are filled by the CTC model (encoder output size, vocabulary size).
    ``temperature`` is nemofn's (NeMo sets it on the module from ``decoding.temperature``).
    """

    _target_: str = f"{NEMO_MODULES}.ConvASRDecoder"
    feat_in: Optional[int] = positive()
    num_classes: int = positive(sentinels=(-1,))
    init_mode: Optional[str] = "xavier_uniform"
    vocabulary: Optional[List[str]] = None
    add_blank: bool = True
    temperature: float = 1.0


@dataclass
class RNNTPredNetConfig:
    """``decoder.prednet`` of :class:`~nemofn.asr.modules.rnnt_decoder.RNNTDecoder` (NeMo reads these keys with
    ``prednet.get``; the defaults are the ones it falls back to).

    ``t_max`` (chrono init) is only accepted as null; ``rnn_hidden_size > pred_hidden`` makes a projected LSTM.
    """

    pred_hidden: int = positive()
    pred_rnn_layers: int = positive(maximum=MAX_LAYERS)
    t_max: Optional[int] = None
    dropout: float = 0.0
    forget_gate_bias: Optional[float] = 1.0
    weights_init_scale: float = 1.0
    hidden_hidden_bias_scale: float = 0.0
    rnn_hidden_size: int = positive(-1, sentinels=(-1,))


@dataclass
class RNNTDecoderConfig:
    """``decoder:`` of :class:`~nemofn.asr.modules.rnnt_decoder.RNNTDecoder` (a transducer's LSTM prediction network).

    ``vocab_size`` is filled by the transducer model (the vocabulary size, without the blank). Only
    ``normalization_mode: null`` is implemented (``batch`` / ``layer`` raise NotImplementedError).
    """

    _target_: str = f"{NEMO_MODULES}.RNNTDecoder"
    prednet: RNNTPredNetConfig = field(default_factory=RNNTPredNetConfig)
    vocab_size: int = positive()
    normalization_mode: Optional[str] = option(None, choices=(None, "batch", "layer"))
    random_state_sampling: bool = False
    blank_as_pad: bool = True


#: The joint activations NeMo's ``RNNTJoint`` accepts (spelt exactly so; ``RELU`` is refused by NeMo too).
RNNT_JOINT_ACTIVATIONS = ("relu", "tanh", "sigmoid")


@dataclass
class RNNTJointNetConfig:
    """``joint.jointnet`` of :class:`~nemofn.asr.modules.rnnt_joint.RNNTJoint`. ``encoder_hidden`` and
    ``pred_hidden`` are filled by the transducer model from ``model_defaults``."""

    encoder_hidden: int = positive()
    pred_hidden: int = positive()
    joint_hidden: int = positive()
    activation: str = option(MISSING, choices=RNNT_JOINT_ACTIVATIONS)
    dropout: float = 0.0


@dataclass
class RNNTJointConfig:
    """``joint:`` of :class:`~nemofn.asr.modules.rnnt_joint.RNNTJoint`.

    ``num_classes`` and ``vocabulary`` are filled by the transducer model; ``num_extra_outputs`` is the number of
    TDT durations. ``fuse_loss_wer: true`` needs ``fused_batch_size``. ``experimental_fuse_loss_wer`` is NeMo's
    deprecated spelling of ``fuse_loss_wer`` (it wins when not null); ``masking_prob > 0`` is HAINAN's random
    masking of the prediction-net output in training.
    """

    _target_: str = f"{NEMO_MODULES}.RNNTJoint"
    jointnet: RNNTJointNetConfig = field(default_factory=RNNTJointNetConfig)
    num_classes: int = positive(sentinels=(-1,))
    num_extra_outputs: int = non_negative(0)
    vocabulary: Optional[List[str]] = None
    log_softmax: Optional[bool] = None
    preserve_memory: bool = False
    fuse_loss_wer: bool = False
    fused_batch_size: Optional[int] = positive(None)
    experimental_fuse_loss_wer: Optional[bool] = None
    masking_prob: float = -1.0


#: NeMo class name -> schema of its config block (the names of ``nemofn.asr.modules.registry.MODULES``).
MODULE_SCHEMAS: dict[str, type] = {
    "AudioToMelSpectrogramPreprocessor": AudioToMelSpectrogramPreprocessorConfig,
    "SpectrogramAugmentation": SpectrogramAugmentationConfig,
    "ConvASREncoder": ConvASREncoderConfig,
    "ConformerEncoder": ConformerEncoderConfig,
    "ConvASRDecoder": ConvASRDecoderConfig,
    "RNNTDecoder": RNNTDecoderConfig,
    "RNNTJoint": RNNTJointConfig,
}


def module_schema(target: str, path: str = "", allowed: tuple[str, ...] | None = None) -> type:
    """The schema of the module a ``_target_`` names (``nemo.collections.asr.modules.ConformerEncoder``).

    Raises:
        ConfigError: a module nemofn does not implement (or one that cannot stand in this block), named.
    """
    allowed = tuple(MODULE_SCHEMAS) if allowed is None else allowed
    name = str(target).rsplit(".", 1)[-1]
    if name not in allowed:
        key = join_key(path, "_target_")
        what = "a module nemofn implements" if name not in MODULE_SCHEMAS else f"a module for {path or 'this block'}"
        raise ConfigError(f"{key}: {target!r} is not {what}; use one of "
                          f"{[f'{NEMO_MODULES}.{n}' for n in allowed]}", key=key)
    return MODULE_SCHEMAS[name]


def select_module(*allowed: str) -> Callable[[Mapping, str], type]:
    """A ``select`` for a model-config slot where the modules ``allowed`` (class names) may stand."""

    def select(block: Mapping, path: str) -> type:
        target = block.get("_target_")
        if target is None:
            key = join_key(path, "_target_")
            raise ConfigError(f"{key} is missing; set e.g. _target_: {NEMO_MODULES}.{allowed[0]}", key=key)
        if isinstance(target, str) and (target == MISSING or "${" in target):
            return MODULE_SCHEMAS[allowed[0]]
        return module_schema(target, path, allowed)

    return select
