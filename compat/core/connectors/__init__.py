"""Connectors between models and `.nemo` archives (NeMo's ``nemo.core.connectors``)."""

from compat.core.connectors.save_restore_connector import SaveRestoreConnector, SavableModel

__all__ = ["SaveRestoreConnector", "SavableModel"]
