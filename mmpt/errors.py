"""Errors a user can fix. train.py / finetune.py print them as one line, without a traceback."""


class MMPTError(Exception):
    """Base class: the message alone must tell the user what is wrong and what is expected."""


class ConfigError(MMPTError):
    """A config value is invalid. The message names the key and what is allowed."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config error at `{key}`: {message}")
        self.key = key


class DataError(MMPTError):
    """A data file is missing, empty or malformed. The message names the file, line and field."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        where = str(path) + (f", line {line}" if line is not None else "")
        what = f"field `{field}`: " if field else ""
        super().__init__(f"data error in {where}: {what}{message}")
        self.path, self.line, self.field = path, line, field


class CheckpointError(MMPTError):
    """A checkpoint is missing, broken, or belongs to another method or shape."""
