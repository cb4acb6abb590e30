"""Train a char CTC model (QuartzNet, Jasper, Conformer-CTC char) from a NeMo config: NeMo's script, ported.

    python scripts/asr/speech_to_text_ctc.py \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=val.json \
        trainer.devices=1 trainer.accelerator=cpu trainer.max_epochs=50
    python scripts/asr/speech_to_text_ctc.py --config-name=conformer_ctc_char ...   # any config in configs/asr
    python scripts/asr/speech_to_text_ctc.py ... +trainer.fast_dev_run=true        # one batch of each, no files

Hydra's command line works as in NeMo (``~model.optim.args``, ``+model.optim.args.betas=[0.8,0.5]``, ``-m``);
the working directory is not changed. Logs and checkpoints go where ``exp_manager`` says (``nemo_experiments/``).
"""

from omegaconf import OmegaConf

import compat.lightning as pl
from compat.collections.asr.models import EncDecCTCModel
from compat.core.config import hydra_runner
from compat.core.config.schemas import validate_experiment_config
from compat.utils import logging
from compat.utils.exp_manager import exp_manager
from compat.utils.trainer_utils import resolve_trainer_cfg


@hydra_runner(config_path="../../configs/asr", config_name="quartznet_15x5")
def main(cfg):
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    validate_experiment_config(cfg)  # every key, before anything is built: a typo names the closest key

    trainer = pl.Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.get("exp_manager", None))
    asr_model = EncDecCTCModel(cfg=cfg.model, trainer=trainer)

    # Initialize the weights of the model from another model, if provided via config
    asr_model.maybe_init_from_pretrained_checkpoint(cfg)

    trainer.fit(asr_model)

    if hasattr(cfg.model, "test_ds") and cfg.model.test_ds.manifest_filepath is not None:
        if asr_model.prepare_test(trainer):
            trainer.test(asr_model)


if __name__ == "__main__":
    main()
