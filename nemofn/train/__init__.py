"""Training: explicit state, ``train_step`` / ``eval_step``, and a hand-written Lightning Fabric loop.

``import nemofn.train`` does not import ``lightning_fabric``; Fabric is imported when ``fit`` runs (or when you
build a Fabric object yourself), so inference and cold start never pay for it.

Typical use without the loop (see ``scripts/examples/custom_loop.py``)::

    model = ModelState.create(*net.init(RngKey(0)))
    cfg = StepConfig(objective, nemofn.optim.adamw(), schedule=1e-3, clip_grad_norm=1.0)
    state, runtime = setup_fabric(fabric, model, cfg.optimizer, rng=0)
    for batch in loader:
        state, metrics = train_step(state, batch, cfg, runtime=runtime)
"""

from nemofn.core.state import DataPosition, ModelState, TrainState
from nemofn.train.adapter import FabricRuntime, FunctionalOptimizerShim, TreeModule, fsdp2_strategy, setup_fabric
from nemofn.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nemofn.train.data import make_loader
from nemofn.train.loop import FitConfig, FitContext, FitResult, evaluate, fit
from nemofn.train.objective import Objective, SupervisedObjective
from nemofn.train.samplers import EpochBatchSampler, RandomBatchSampler, SemiSortedBatchSampler
from nemofn.train.skips import NonFiniteLossError, NonFiniteStepWarning
from nemofn.train.step import eval_step, train_step
from nemofn.train.step_config import MicroBatches, StepConfig

__all__ = [
    "ModelState", "TrainState", "DataPosition",
    "Objective", "StepConfig", "MicroBatches", "SupervisedObjective", "train_step", "eval_step",
    "TreeModule", "FunctionalOptimizerShim", "FabricRuntime", "setup_fabric", "fsdp2_strategy",
    "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "EpochBatchSampler", "RandomBatchSampler", "SemiSortedBatchSampler", "make_loader",
    "FitConfig", "FitContext", "FitResult", "fit", "evaluate", "NonFiniteLossError", "NonFiniteStepWarning",
]
