"""The one place that imports TRL's (unexported) trainer base, so a TRL refactor breaks one line, not many."""

from trl.trainer.base_trainer import _BaseTrainer as BaseTrainer

__all__ = ["BaseTrainer"]
