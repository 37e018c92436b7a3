"""The one exception the configuration loader raises: what is wrong, where, and how to fix it."""

from __future__ import annotations


def _one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so the message stays on one line."""
    return " ".join(str(text).split())


class ConfigError(Exception):
    """A configuration a person has to correct before mgfast can start.

    ``file`` is the config file as the user named it (or ``<embedded default>``), ``path`` the JSON
    path of the offending value (``out_stream.send_timeout``, ``auth.basic.etcd.urls[0]``; empty
    when the whole file is the issue), ``problem`` what is wrong, ``fix`` what to do about it.
    ``str(err)`` is one line, ``{file}: {path}: {problem}. Fix: {fix}``: the CLI prints it as is and
    exits with ``exit_status`` (2), without a traceback.
    """

    exit_status = 2

    def __init__(self, file: str, path: str, problem: str, fix: str) -> None:
        self.file = _one_line(file)
        self.path = _one_line(path)
        self.problem = _one_line(problem).rstrip(".")
        self.fix = _one_line(fix)
        super().__init__(self.file, self.path, self.problem, self.fix)

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}: " if self.path else f"{self.file}: "
        return f"{where}{self.problem}. Fix: {self.fix}"

    def __reduce__(self):  # keep it picklable across the master/worker process boundary
        return (type(self), (self.file, self.path, self.problem, self.fix))
