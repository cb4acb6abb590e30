"""When the loop validates: Lightning's ``val_check_interval`` / ``check_val_every_n_epoch`` rules as pure functions.

* ``val_check_interval`` a float ``f`` in ``(0, 1]``: validate every ``max(1, int(f * batches_per_epoch))`` training
  batches of an epoch (``1.0``: at the end of each epoch).
* an int ``N``: every ``N`` training batches, counted within the epoch, or over the whole run when
  ``check_val_every_n_epoch`` is ``None``. Counted within the epoch, ``N`` larger than an epoch would never fire:
  that is an error, as in Lightning.
* ``check_val_every_n_epoch`` ``k``: only in every ``k``-th epoch (``None``: every epoch, with the run-wide count).

Batches are training batches (micro-batches), not optimizer steps; the loop checks after each optimizer step
whether one of the batches it just consumed was a validation point.
"""

from __future__ import annotations

import attrs

__all__ = ["ValidationSchedule"]


@attrs.frozen
class ValidationSchedule:
    """Resolved validation points for an epoch of ``batches_per_epoch`` batches.

    Attributes:
        every: validate after every ``every`` batches (``None``: never).
        run_wide: count batches over the whole run instead of within each epoch.
        every_n_epochs: only in epochs ``e`` with ``(e + 1) % every_n_epochs == 0`` (``None``: all epochs).
    """

    every: int | None
    run_wide: bool
    every_n_epochs: int | None

    @classmethod
    def resolve(cls, val_check_interval: int | float, check_val_every_n_epoch: int | None,
                batches_per_epoch: int) -> ValidationSchedule:
        """From Lightning's two settings; raises ``ValueError`` naming the setting that cannot work."""
        if check_val_every_n_epoch is not None and check_val_every_n_epoch < 1:
            raise ValueError(f"check_val_every_n_epoch must be >= 1 or None, got {check_val_every_n_epoch}")
        if isinstance(val_check_interval, bool) or val_check_interval <= 0:
            raise ValueError(f"val_check_interval must be an int >= 1 or a float in (0, 1], got {val_check_interval!r}")
        if isinstance(val_check_interval, float):
            if val_check_interval > 1.0:
                raise ValueError(f"val_check_interval={val_check_interval}: a float is a fraction of an epoch and must "
                                 "be in (0.0, 1.0]; use an int for a number of batches")
            every = max(1, int(batches_per_epoch * val_check_interval))
            return cls(every, False, check_val_every_n_epoch)
        every = int(val_check_interval)
        if check_val_every_n_epoch is not None and every > batches_per_epoch:
            raise ValueError(
                f"val_check_interval ({every}) must be less than or equal to the number of training batches per epoch "
                f"({batches_per_epoch}). To validate every {every} batches across epochs, set "
                "check_val_every_n_epoch=None (trainer.check_val_every_n_epoch: null)")
        return cls(every, check_val_every_n_epoch is None, check_val_every_n_epoch)

    def due(self, epoch: int, done_in_epoch: int, consumed: int, batches_per_epoch: int) -> bool:
        """Whether one of the last ``consumed`` batches (ending at ``done_in_epoch`` of epoch ``epoch``) was a
        validation point."""
        if self.every is None:
            return False
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs != 0:
            return False
        end = epoch * batches_per_epoch + done_in_epoch if self.run_wide else done_in_epoch
        return end // self.every != (end - consumed) // self.every
