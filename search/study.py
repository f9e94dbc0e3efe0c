"""Where the Optuna study lives: a journal file beside the experiment, or a database.

A database URL may name secrets as ``${VAR}`` (``postgresql://mix:${PGPASSWORD}@db/optuna``). They
are read from the environment when connecting, masked in logs, and never stored: Tune pickles
the searcher (and so this storage) into the experiment folder, and what it pickles is the
template, expanded again from the environment when the experiment is resumed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import optuna

from search.config import ConfigError

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"


def expand_secrets(value: str) -> str:
    """``${VAR}`` from the environment: secrets (a database password) stay out of config files."""
    missing = [name for name in re.findall(r"\$\{(\w+)\}", value) if name not in os.environ]
    if missing:
        raise ConfigError(f"search.study_storage: environment variable(s) {missing} not set")
    return os.path.expandvars(value)


def redact(url: str) -> str:
    """A URL fit for logs: ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class TemplateRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage that pickles its URL template, never the expanded secret."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(expand_secrets(template))

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["url"] = self.template
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": expand_secrets(state["template"])})


def study_storage(url: str | None, local_experiment: str):
    """The configured database, or a journal file in the (local) experiment folder."""
    if url:
        storage = TemplateRDBStorage(url)
        log.info("Optuna study in %s", redact(storage.url))
        return storage
    Path(local_experiment).mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{local_experiment}/{JOURNAL}"))
