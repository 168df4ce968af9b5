"""The error type for input the user controls: the CLI prints it as one line, not a traceback."""

import contextlib
import errno
from collections.abc import Iterator


class UserError(Exception):
    """An error caused by input the user controls (config, paths, data). Printed as one line."""


class UnresolvedInterpolation(UserError):
    """A config value whose interpolation cannot be resolved in this process (`${oc.env:VAR}` of a
    variable that is not set here): an error here, though a job on another machine may resolve it."""


# the errors of a path that exists but cannot be used as it is (not a missing file, which at this
# point is more often a bug than the user's input)
FILE_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)


def file_error_line(e: OSError) -> str | None:
    """An OSError about a named file that cannot be used (unreadable, a file where a folder belongs,
    a full disk, ...) in one line naming the path and what is expected there; None otherwise."""
    if not e.filename or e.errno not in FILE_ERRNOS:
        return None
    expected = {
        FileExistsError: "expected a folder there",
        NotADirectoryError: "expected a folder there",
        IsADirectoryError: "expected a file there, not a folder",
        PermissionError: "this user may not use it",
    }.get(type(e))
    said = f"{e.filename}: {e.strerror or e}"
    return f"{said}; {expected}" if expected else said


def hydra_error_line(e: Exception) -> str:
    """Hydra's error for a command line that does not compose, in one line, with what its further
    lines say that a user needs: the group's options, the value's type error, how to quote."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    first = lines[0]
    if any(line.startswith("Available options in") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options in"))
        options = []
        for line in lines[start + 1 :]:
            if not line.startswith("\t"):
                break
            if not line.strip().endswith("_schema"):  # the dataclass schemas, not choices
                options.append(line.strip())
        return f"{first}; available: {', '.join(options)}"
    if first.startswith("Error merging override") and e.__cause__ is not None:
        cause = str(e.__cause__).strip().splitlines()[0]
        key = first.rsplit(" ", 1)[-1].split("=", 1)[0]
        hint = (
            f" (a config group is chosen with /: {key.replace('.', '/')}=...)"
            if "is not a subclass" in cause
            else ""
        )
        return f"{first}: {cause}{hint}"
    if first.startswith("LexerNoViableAltException: "):
        override = first.split(": ", 1)[1]
        key, _, value = override.partition("=")
        quoted = f"\"{key}='{value}'\""
        return f"{override} does not parse as an override: quote the value inside the argument, {quoted}"
    if any("override_grammar" in line for line in lines):
        grammar = "Hydra's override grammar: quote values with special characters"
        return f"{first}: an override does not parse ({grammar})"
    return first


@contextlib.contextmanager
def files_as_user_errors() -> Iterator[None]:
    """Inside: an OSError about a file of the user's that cannot be used becomes the UserError of
    its one line, so that it is reported (and recorded by a sweep) as any bad input is."""
    try:
        yield
    except OSError as e:
        line = file_error_line(e)
        if line is None:
            raise
        raise UserError(line) from e
