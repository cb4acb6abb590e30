"""Train a subword transducer (RNNT or TDT: FastConformer-Transducer, parakeet) from a NeMo config: NeMo's script,
ported.

    python scripts/asr/speech_to_text_rnnt_bpe.py --config-name=fastconformer_transducer_bpe \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=val.json \
        model.tokenizer.dir=tokenizer_spe_bpe_v128 trainer.devices=1 trainer.accelerator=cpu trainer.max_epochs=50
    python scripts/asr/speech_to_text_rnnt_bpe.py --config-name=fastconformer_tdt_bpe ...   # TDT (loss_name: tdt)

A TDT model is an ``EncDecRNNTBPEModel`` whose config says ``loss.loss_name: tdt``, as in NeMo; unlike NeMo 3.0,
it trains on the CPU. Hydra's command line works as in NeMo; logs and checkpoints go where ``exp_manager`` says.
"""

from omegaconf import OmegaConf

import compat.lightning as pl
from compat.collections.asr.models import EncDecRNNTBPEModel
from compat.core.config import hydra_runner
from compat.core.config.schemas import validate_experiment_config
from compat.utils import logging
from compat.utils.exp_manager import exp_manager
from compat.utils.trainer_utils import resolve_trainer_cfg


@hydra_runner(config_path="../../configs/asr", config_name="fastconformer_transducer_bpe")
def main(cfg):
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    validate_experiment_config(cfg)  # every key, before anything is built: a typo names the closest key

    trainer = pl.Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.get("exp_manager", None))
    asr_model = EncDecRNNTBPEModel(cfg=cfg.model, trainer=trainer)

    # Initialize the weights of the model from another model, if provided via config
    asr_model.maybe_init_from_pretrained_checkpoint(cfg)

    trainer.fit(asr_model)

    if hasattr(cfg.model, "test_ds") and cfg.model.test_ds.manifest_filepath is not None:
        if asr_model.prepare_test(trainer):
            trainer.test(asr_model)


if __name__ == "__main__":
    main()
