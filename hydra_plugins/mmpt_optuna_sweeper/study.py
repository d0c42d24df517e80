"""Opening a worker's study (create, resume, or resume only) and the trial-folder guard.

A study is named by its storage and study_name. Two storage values name the same study when they
resolve to the same database (mmpt.storage.study_identity): a relative or an absolute SQLite path
to one file, a PostgreSQL URL with the password in it or in PGPASSWORD.
"""
import contextlib
import logging
from pathlib import Path

import optuna
import yaml

from mmpt.errors import ConfigError
from mmpt.storage import masked, study_identity

log = logging.getLogger(__name__)

LOAD_IF_EXISTS = (True, False, "only")


def open_study(url, storage, study_name, directions, load_if_exists, **kwargs):
    """(the study, whether this worker created it): several workers may race to create it.
    load_if_exists: true resumes or creates, "only" resumes (a missing study is refused: a
    misspelled study_name), false creates (an existing study is refused)."""
    if load_if_exists not in LOAD_IF_EXISTS:
        raise ConfigError("hydra.sweeper.load_if_exists", f"expected true, false or only, got {load_if_exists!r}")
    others = sorted(s.study_name for s in storage.get_all_studies())
    where = f"{masked(url)}"
    if load_if_exists == "only" and study_name not in others:
        raise ConfigError("hydra.sweeper.study_name", f"no study {study_name!r} in {where} (load_if_exists=only "
                          f"resumes a study, never creates one); it holds: {', '.join(others) or 'no study'}")
    if load_if_exists is False and study_name in others:
        raise ConfigError("hydra.sweeper.study_name", f"study {study_name!r} is already in {where} "
                          "(load_if_exists=false creates a new study): choose another name")
    kwargs.update(study_name=study_name, storage=storage)
    study, created = None, False
    if study_name is not None:
        with contextlib.suppress(KeyError):
            study = optuna.load_study(**kwargs)
    if study is None:
        try:
            study, created = optuna.create_study(directions=directions, **kwargs), True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
    if created and others:
        log.warning("NEW STUDY %s in %s, which holds %d other(s): %s (resume one with its study_name; "
                    "hydra.sweeper.load_if_exists=only refuses to create a study)", study.study_name, where,
                    len(others), ", ".join(others[:10]))
    elif created:
        log.info("new study %s in %s", study.study_name, where)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError("hydra.sweeper.direction", f"study {study.study_name} in {where} is {have}, not {directions}")
    return study, created


def refuse_foreign_folders(config, sweep_dir: Path, url, study_name) -> None:
    """Stop before a trial would write into a folder of another study (numbered trial folders).
    A folder's study is read from its .hydra/hydra.yaml: storage, study_name and launch directory
    (which a relative SQLite or journal path is relative to)."""
    from omegaconf import OmegaConf

    subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
    if "hydra.sweeper.trial" not in subdir and "hydra.job.num" not in subdir:
        return
    mine = study_identity(url, study_name)
    taken = []
    for hydra_yaml in sweep_dir.glob("*/.hydra/hydra.yaml") if sweep_dir.is_dir() else []:
        if not hydra_yaml.parent.parent.name.isdigit():
            continue
        hydra = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra") or {}
        sweeper = hydra.get("sweeper") or {}
        cwd = (hydra.get("runtime") or {}).get("cwd")
        # an in-memory study restarts its numbers at 0: any trial folder would be overwritten
        if url is None or study_identity(sweeper.get("storage"), sweeper.get("study_name"), cwd) != mine:
            taken.append(int(hydra_yaml.parent.parent.name))
    if taken:
        raise ConfigError("hydra.sweep.dir", f"{sweep_dir} already holds trial folder(s) {sorted(taken)[:10]} "
                          "of another study; use a new sweep dir, or the same hydra.sweeper.storage and "
                          "study_name to continue that study")
