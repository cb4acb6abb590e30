"""Train a subword hybrid transducer + CTC model (RNNT or TDT with an auxiliary CTC head, e.g. parakeet-tdt_ctc)
from a NeMo config: NeMo's script, ported.

    python scripts/asr/speech_to_text_hybrid_rnnt_ctc_bpe.py --config-name=fastconformer_hybrid_transducer_ctc_bpe \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=val.json \
        model.tokenizer.dir=tokenizer_spe_bpe_v128 trainer.devices=1 trainer.accelerator=cpu trainer.max_epochs=50
    python scripts/asr/speech_to_text_hybrid_rnnt_ctc_bpe.py --config-name=fastconformer_hybrid_tdt_ctc_bpe ...  # TDT + CTC

The loss is ``(1 - w) * transducer + w * ctc`` with ``w = model.aux_ctc.ctc_loss_weight``; a TDT hybrid trains on
the CPU here (NeMo 3.0 cannot). Hydra's command line works as in NeMo; logs and checkpoints go where ``exp_manager`` says.
"""

from omegaconf import OmegaConf

import compat.lightning as pl
from compat.collections.asr.models import EncDecHybridRNNTCTCBPEModel
from compat.core.config import hydra_runner
from compat.core.config.schemas import validate_experiment_config
from compat.utils import logging
from compat.utils.exp_manager import exp_manager
from compat.utils.trainer_utils import resolve_trainer_cfg


@hydra_runner(config_path="../../configs/asr", config_name="fastconformer_hybrid_transducer_ctc_bpe")
def main(cfg):
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    validate_experiment_config(cfg)  # every key, before anything is built: a typo names the closest key

    trainer = pl.Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.get("exp_manager", None))
    asr_model = EncDecHybridRNNTCTCBPEModel(cfg=cfg.model, trainer=trainer)

    # Initialize the weights of the model from another model, if provided via config
    asr_model.maybe_init_from_pretrained_checkpoint(cfg)

    trainer.fit(asr_model)

    if hasattr(cfg.model, "test_ds") and cfg.model.test_ds.manifest_filepath is not None:
        if asr_model.prepare_test(trainer):
            trainer.test(asr_model)


if __name__ == "__main__":
    main()
