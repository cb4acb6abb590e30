"""NeMo's ``nemo.collections.asr.models``: the ASR model classes (their code lives in ``compat.models``)."""

from compat.models.asr_model import ASRModel
from compat.models.ctc_bpe_models import EncDecCTCModelBPE
from compat.models.ctc_models import EncDecCTCModel

__all__ = ["ASRModel", "EncDecCTCModel", "EncDecCTCModelBPE"]
