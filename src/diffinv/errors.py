"""The one exception type that carries a message meant for the user."""


class DiffinvError(Exception):
    """Bad input or an impossible request, explained in one line.

    The command-line tool prints its message alone on stderr and exits with status 2.
    """


class DiffinvWarning(UserWarning):
    """Something the user should know, though the work goes on (the command line prints it as one
    line even when it hides the libraries' warnings)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the interrupted work had written by then (its one argument, a sentence
    the command line prints after "interrupted; ")."""
