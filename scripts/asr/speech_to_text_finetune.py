"""Fine-tune a ``.nemo`` ASR model on new data: NeMo's ``speech_to_text_finetune.py``, ported.

    python scripts/asr/speech_to_text_finetune.py init_from_nemo_model=model.nemo \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=val.json \
        trainer.max_steps=2000 trainer.devices=1 trainer.accelerator=cpu
    ... model.tokenizer.update_tokenizer=true model.tokenizer.dir=new_tokenizer     # a new BPE vocabulary
    ... model.char_labels.update_labels=true "model.char_labels.labels=[' ',a,b,c]"  # a new char vocabulary
    ... model.freeze_updates.enabled=true                                         # the encoder stays as it is

The model comes from the ``.nemo`` (``init_from_nemo_model``) or ``init_from_pretrained_model``; the config
(``configs/asr/speech_to_text_finetune.yaml``) gives the data, optimizer, SpecAugment, the vocabulary change and
``freeze_updates`` (frozen modules get no gradient and no optimizer state, and are saved unchanged).
"""

import copy

from omegaconf import OmegaConf, open_dict

import compat.lightning as pl
from compat.collections.asr.models import ASRModel
from compat.core.config import hydra_runner
from compat.core.config.schemas import validate_experiment_config
from compat.utils import logging
from compat.utils.exp_manager import exp_manager
from compat.utils.trainer_utils import resolve_trainer_cfg


def get_base_model(trainer, cfg):
    """The model to fine-tune, from ``init_from_nemo_model`` or ``init_from_pretrained_model`` (exactly one)."""
    nemo_model_path = cfg.get("init_from_nemo_model", None)
    pretrained_name = cfg.get("init_from_pretrained_model", None)
    if nemo_model_path is not None and pretrained_name is not None:
        raise ValueError("pass init_from_nemo_model or init_from_pretrained_model, not both")
    if nemo_model_path is None and pretrained_name is None:
        raise ValueError("pass init_from_nemo_model=<model.nemo> (or init_from_pretrained_model=<name>)")
    if nemo_model_path is not None:
        asr_model = ASRModel.restore_from(restore_path=nemo_model_path, trainer=trainer)
    else:
        asr_model = ASRModel.from_pretrained(model_name=pretrained_name, trainer=trainer)
    asr_model.set_trainer(trainer)
    return asr_model


def check_vocabulary(asr_model, cfg):
    """A new tokenizer or char label set when the config asks for one (the decoder is re-initialised)."""
    tokenizer = cfg.model.get("tokenizer")
    labels = cfg.model.get("char_labels")
    if tokenizer is not None and tokenizer.get("update_tokenizer"):
        if labels is not None and labels.get("update_labels"):
            raise ValueError("model.tokenizer.update_tokenizer and model.char_labels.update_labels cannot both be set")
        if tokenizer.get("dir") is None:
            raise ValueError("model.tokenizer.dir must name the new tokenizer's folder when update_tokenizer is true")
        vocab_size = len(asr_model.tokenizer.vocabulary)
        decoder = copy.deepcopy(asr_model.decoder.state_dict())
        asr_model.change_vocabulary(new_tokenizer_dir=tokenizer.dir, new_tokenizer_type=tokenizer.type)
        if len(asr_model.tokenizer.vocabulary) == vocab_size:
            asr_model.decoder.load_state_dict(decoder)  # same size: keep the trained decoder
        else:
            logging.warning("the new tokenizer has another vocabulary size: the decoder is re-initialised")
    elif labels is not None and labels.get("update_labels"):
        asr_model.change_vocabulary(new_vocabulary=list(labels.labels))
        logging.warning("the vocabulary of the model was replaced by the given char labels")
    else:
        logging.info("reusing the vocabulary of the pretrained model")
    return asr_model


def setup_dataloaders(asr_model, cfg):
    """Training, validation (and test) data from the fine-tuning config."""
    asr_model.setup_training_data(cfg.model.train_ds)
    asr_model.setup_multiple_validation_data(cfg.model.validation_ds)
    if cfg.model.get("test_ds") is not None and cfg.model.test_ds.manifest_filepath is not None:
        asr_model.setup_multiple_test_data(cfg.model.test_ds)
    return asr_model


@hydra_runner(config_path="../../configs/asr", config_name="speech_to_text_finetune")
def main(cfg):
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    validate_experiment_config(cfg, finetune=True)  # every key, before anything is built; a typo names the closest

    trainer = pl.Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.get("exp_manager", None))

    if cfg.get("init_from_ptl_ckpt") is not None:
        raise NotImplementedError("this script fine-tunes from init_from_nemo_model or init_from_pretrained_model")

    asr_model = get_base_model(trainer, cfg)
    asr_model = check_vocabulary(asr_model, cfg)
    asr_model = setup_dataloaders(asr_model, cfg)
    with open_dict(asr_model.cfg):
        asr_model.cfg.optim = copy.deepcopy(cfg.model.optim)
        if cfg.model.get("freeze_updates") is not None:
            asr_model.cfg.freeze_updates = copy.deepcopy(cfg.model.freeze_updates)
        if cfg.model.get("spec_augment") is not None:
            asr_model.cfg.spec_augment = copy.deepcopy(cfg.model.spec_augment)
    asr_model.setup_optimization(cfg.model.optim)
    if cfg.model.get("spec_augment") is not None:
        asr_model.spec_augmentation = ASRModel.from_config_dict(cfg.model.spec_augment)

    trainer.fit(asr_model)


if __name__ == "__main__":
    main()  # noqa pylint: disable=no-value-for-parameter
