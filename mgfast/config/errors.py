"""What the loader tells a person: an error that stops start-up, or a warning that does not.

Both name the file, the JSON path, the problem and the fix, on one line:
``{file}: {path}: {problem}. Fix: {fix}``.
"""

from __future__ import annotations


def _one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so the message stays on one line."""
    return " ".join(str(text).split())


def _format(file: str, path: str, problem: str, fix: str) -> str:
    where = f"{file}: {path}: " if path else f"{file}: "
    return f"{where}{problem}. Fix: {fix}"


class ConfigError(Exception):
    """A configuration a person has to correct before mgfast can start.

    ``file`` is the config file as the user named it (or ``<embedded default>``), ``path`` the JSON
    path of the offending value (``out_stream.send_timeout``, ``auth.basic.etcd.urls[0]``; empty
    when the whole file is the issue), ``problem`` what is wrong, ``fix`` what to do about it.
    The CLI prints ``str(err)`` as is and exits with ``exit_status`` (2), without a traceback.
    """

    exit_status = 2

    def __init__(self, file: str, path: str, problem: str, fix: str) -> None:
        self.file = _one_line(file)
        self.path = _one_line(path)
        self.problem = _one_line(problem).rstrip(".")
        self.fix = _one_line(fix)
        super().__init__(self.file, self.path, self.problem, self.fix)

    def __str__(self) -> str:
        return _format(self.file, self.path, self.problem, self.fix)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str, str]]:  # keep it picklable across the master/worker process boundary
        return (type(self), (self.file, self.path, self.problem, self.fix))


class ConfigWarning:
    """Something upstream accepts that is probably a mistake (an unknown key, a mode written as
    if JSON had octal): logged at start-up, an error under ``--strict`` / ``"strict": true``."""

    __slots__ = ("file", "path", "problem", "fix")

    def __init__(self, file: str, path: str, problem: str, fix: str) -> None:
        self.file = _one_line(file)
        self.path = _one_line(path)
        self.problem = _one_line(problem).rstrip(".")
        self.fix = _one_line(fix)

    def __str__(self) -> str:
        return _format(self.file, self.path, self.problem, self.fix)

    def __repr__(self) -> str:
        return f"ConfigWarning({str(self)!r})"
