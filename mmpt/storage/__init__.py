"""Optuna storages behind `hydra.sweeper.storage`: one kind per URL scheme, in this folder.

    null               in memory (one process, gone at its end)
    sqlite:///FILE     sqlite.py: one machine
    journal:///FILE    journal.py: a shared filesystem, no database server
    postgresql://...   database.py: any SQLAlchemy URL (MySQL, ... with their drivers)

Both sides of a sweep open storages here: the sweeper (hydra_plugins/mmpt_optuna_sweeper) and each
job (mmpt/trial.py). A new kind is one module in this folder: a StorageKind subclass registered
under its scheme(s) in STORAGES (base.py); this package imports every module here, so nothing else
is edited. Import Optuna inside its functions, as the kinds here do (Hydra's start-up imports
this package).
"""
from mmpt.registry import import_room
from mmpt.storage.base import (STORAGE_KEY, STORAGES, Heartbeat, StorageKind, first_line, kind_of, masked,
                               open_storage, study_identity)

KINDS = import_room(__name__, __path__)  # every module of this folder registers its kind

__all__ = ["STORAGES", "STORAGE_KEY", "Heartbeat", "StorageKind", "first_line", "kind_of", "masked",
           "open_storage", "study_identity"]
