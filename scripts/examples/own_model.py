"""Your own model: a functional network from nemofn modules, plus a small compat class that builds it from a config.

``TinyEncoder`` is a stateless nemofn module; ``TinyCTCModel`` says how its config becomes a functional model (the
data and the CTC loss come with ``CTCModel``). ``compat.Trainer``, ``save_to``, ``restore_from`` and ``transcribe``
then work as for NeMo's models::

    python scripts/examples/own_model.py path/to/train_manifest.json   # char labels a-z, space, apostrophe
"""

import sys

import attrs
import torch

from compat import Trainer
from compat.collections.asr.models import EncDecCTCModel
from compat.core.classes import ModelPT
from nemofn.asr.decoding import CharDecoder
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.models.ctc_network import CTCNetwork
from nemofn.asr.modules.decoder import ConvASRDecoder
from nemofn.asr.modules.preprocessor import AudioToMelSpectrogramPreprocessor
from nemofn.asr.tokenizers import CharTokenizer
from nemofn.nn.conv import Conv1d
from nemofn.nn.module import Module


@attrs.frozen
class TinyEncoder(Module):
    """Features ``[B, F, T]`` -> ``([B, D, T], lengths)``: one pointwise convolution and a ReLU."""

    feat_in: int
    d_model: int = 64

    @property
    def feat_out(self) -> int:
        return self.d_model

    def init(self, rng):
        return {"proj": Conv1d(self.feat_in, self.d_model, 1).init(rng)[0]}, {}

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        y, _ = Conv1d(self.feat_in, self.d_model, 1).apply(params["proj"], {}, x)
        return (torch.relu(y), lengths), buffers


class TinyCTCModel(EncDecCTCModel, nemo_target="nemo.collections.asr.models.TinyCTCModel"):
    """Config: ``labels``, ``preprocessor: {features, ...}``, ``encoder: {d_model}``, ``train_ds``, ``optim``.

    ``nemo_target`` is written into ``cfg.target`` and registers the class for ``restore_from``; it must start
    with one of NeMo's allowed prefixes (``compat.registry.ALLOWED_TARGET_PREFIXES``) for ``save_to`` to write it.
    """

    def build_functional(self, cfg):
        labels = list(cfg.labels)
        preprocessor = AudioToMelSpectrogramPreprocessor.from_config(cfg.preprocessor)
        encoder = TinyEncoder(feat_in=preprocessor.features, **cfg.encoder)
        decoder = ConvASRDecoder(feat_in=encoder.feat_out, num_classes=len(labels), vocabulary=labels)
        network = CTCNetwork(preprocessor=preprocessor, encoder=encoder, decoder=decoder)
        return CTCModel(cfg=cfg, network=network, tokenizer=CharTokenizer(labels), text_decoder=CharDecoder(labels))


def main(train_manifest: str, out: str = "tiny_ctc.nemo", steps: int = 20) -> None:
    labels = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    cfg = {"sample_rate": 16000, "labels": labels, "preprocessor": {"features": 32, "dither": 0.0},
           "encoder": {"d_model": 64}, "optim": {"name": "adamw", "lr": 3e-3},
           "train_ds": {"manifest_filepath": train_manifest, "batch_size": 8, "shuffle": True}}
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    model = TinyCTCModel(cfg, trainer=trainer)        # builds the data loader from train_ds, as NeMo does
    trainer.fit(model)                                # training_step's loss; backward and updates by the loop
    print(f"loss after {steps} steps: {trainer.logged_metrics['train_loss']:.3f}")
    model.save_to(out)
    restored = ModelPT.restore_from(out)              # a TinyCTCModel again, from its `target`
    first = restored.transcribe(train_manifest, verbose=False)[0]   # a manifest path: all its files
    print(type(restored).__name__, repr(first.text))


if __name__ == "__main__":
    main(sys.argv[1])
