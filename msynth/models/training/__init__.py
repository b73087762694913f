"""Training synthesis networks, in small modules.

* :mod:`~msynth.models.training.config` — :class:`TrainingConfig`, the settings of one run;
* :mod:`~msynth.models.training.stopping` — Prechelt's UP_p early-stopping rule (paper 001: p = 3, q = 5);
* :mod:`~msynth.models.training.patches` — random brain-centred patches or a 50 %-overlap grid; mirror, rotation and
  scaling augmentation;
* :mod:`~msynth.models.training.steps` — one optimiser update: :class:`SupervisedStep` (MSE, L1, ROI-weighted L1) or
  :class:`AdversarialStep` (the conditional GANs of thesis 003);
* :mod:`~msynth.models.training.loop` — :func:`train_model`: epochs, validation, stopping, checkpoints and resume;
* :mod:`~msynth.models.training.crossval` — folds over subjects (groups spread over folds), stages trained in
  turn (Sketcher, Refiners), the final model and its card;
* :mod:`~msynth.models.training.workers` — the folds' pydra workers: local processes or SLURM jobs, and the cleanup
  that lets a killed fold resume.
"""

from msynth.models.training.config import TrainingConfig
from msynth.models.training.crossval import (
    PSNR_PEAK, add_sketches, assign_folds, cross_validate, evaluate_volume, fold_task, predict_session, roi_errors,
    run_fold, split_validation, stage_names, train_stages,
)
from msynth.models.training.loop import CHECKPOINT_NAME, EpochRecord, TrainingResult, train_model, validation_error
from msynth.models.training.patches import Batch, sample_patch_corners
from msynth.models.training.steps import AdversarialStep, SupervisedStep, build_step, make_optimizer, supervised_loss
from msynth.models.training.stopping import StripStopping, strip_stop_epoch

__all__ = [
    "CHECKPOINT_NAME", "PSNR_PEAK", "AdversarialStep", "Batch", "EpochRecord", "StripStopping", "SupervisedStep",
    "TrainingConfig", "TrainingResult", "add_sketches", "assign_folds", "build_step", "cross_validate",
    "evaluate_volume", "fold_task", "make_optimizer", "predict_session", "roi_errors", "run_fold",
    "split_validation", "stage_names", "strip_stop_epoch", "supervised_loss", "train_model", "train_stages",
    "validation_error",
]
