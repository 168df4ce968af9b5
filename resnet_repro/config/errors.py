"""The error type for input the user controls: the CLI prints it as one line, not a traceback."""


class UserError(Exception):
    """An error caused by input the user controls (config, paths, data). Printed as one line."""
