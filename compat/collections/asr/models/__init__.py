"""NeMo's ``nemo.collections.asr.models``: the ASR model classes (their code lives in ``compat.models``)."""

from compat.models.asr_model import ASRModel
from compat.models.ctc_bpe_models import EncDecCTCModelBPE
from compat.models.ctc_models import EncDecCTCModel
from compat.models.hybrid_rnnt_ctc_models import EncDecHybridRNNTCTCBPEModel, EncDecHybridRNNTCTCModel
from compat.models.rnnt_bpe_models import EncDecRNNTBPEModel
from compat.models.rnnt_models import EncDecRNNTModel

__all__ = ["ASRModel", "EncDecCTCModel", "EncDecCTCModelBPE", "EncDecRNNTModel", "EncDecRNNTBPEModel",
           "EncDecHybridRNNTCTCModel", "EncDecHybridRNNTCTCBPEModel"]
