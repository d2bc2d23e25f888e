"""What every `python -m minircnn.*` command shares: argument checks and error reporting.

Bad input is refused in one line on stderr, ``error: <what>: <why>``, with exit status 2
(argparse's status for a bad command line), before anything expensive runs:

* numbers are checked as they are parsed, by the ``type=`` validators below, whose
  messages give the accepted range;
* files and folders are checked where they are read; the readers raise ``InputError``
  (``CheckpointError``, ``VOCFormatError``, ``ConvertError``... derive from it), or
  ``FileNotFoundError``, with the offending path first in the message;
* ``command`` turns those into the one line. Any other exception is a bug and keeps its
  traceback, as does every error when ``--debug`` is given.

This module imports nothing from minircnn, so the readers can import ``InputError``.
"""

import argparse
import functools
import math
import sys
from collections.abc import Callable, Sequence


class InputError(ValueError):
    """Something the user gave (an argument, a file, a folder) cannot be used; not a bug.

    The message starts with the offending argument or path. ``command`` prints it as one
    line; the readers' own error types derive from this one.
    """


class UsageError(InputError):
    """A command-line argument that cannot be used; the message starts with the option."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the commands' conventions: a ``--debug`` flag, the description shown
    as written, and errors as one line ``error: <message>`` with exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", help="on an error, show the full traceback"
        )

    def error(self, message: str):
        """Print ``error: message`` (no usage block: the message names the argument)."""
        self.exit(2, f"error: {message}\n")


def command(main: Callable) -> Callable:
    """Decorate a command's ``main(argv=None)``: an expected error (``user_error``) is
    printed as ``error: <message>`` on stderr and main returns 2; with ``--debug`` in
    argv it propagates with its traceback. Other exceptions always propagate."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None):
        args = sys.argv[1:] if argv is None else argv
        try:
            return main(argv)
        except Exception as err:
            message = user_error(err)
            if message is None or "--debug" in args:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2

    return wrapper


def run(main: Callable) -> None:
    """Run a ``command``-decorated main as the program: exit with the status it returns
    (an int), or 0 when it returns something else (a results dict)."""
    result = main()
    sys.exit(result if isinstance(result, int) else 0)


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, None for a bug.

    ``InputError``s; ``FileNotFoundError`` (the readers raise it with the path first);
    any other ``OSError`` that names its file (unreadable, a folder where a file was
    expected, permission denied, disk full...). A plain ValueError is not taken: raised
    outside the readers it usually means a bug, which needs its traceback."""
    if isinstance(err, InputError):
        return str(err)
    if isinstance(err, OSError):
        if err.filename is not None:
            return f"{err.filename}: {err.strerror or err}"
        if isinstance(err, FileNotFoundError):
            return str(err)
    return None


# -- argparse ``type=`` validators: each returns the parsed value or raises
# ArgumentTypeError, which argparse reports as "argument --x: <message>".


def _fail(text: str, expected: str):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")


def int_at_least(minimum: int, what: str = "an integer") -> Callable[[str], int]:
    """Validator: an integer >= ``minimum`` (``what`` names it in the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            _fail(text, f"{what} >= {minimum}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
positive_int.__doc__ = "Validator: an integer >= 1 (a count: epochs, images, iterations)."
non_negative_int = int_at_least(0)
non_negative_int.__doc__ = "Validator: an integer >= 0 (a seed, a count that may be 0)."


def jobs(text: str) -> int:
    """Validator: worker processes, joblib's way: n >= 1, or -1 for every core, -2 for all
    but one... (0 means nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0:
        _fail(text, "a number of workers >= 1, or -1 for all cores (-2: all but one...)")
    return value


def _float_or_nan(text: str) -> float:
    """``float(text)``, NaN when it is not a number (every range check then fails)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_finite_float(text: str) -> float:
    """Validator: a finite number > 0 (a learning rate)."""
    value = _float_or_nan(text)
    if not (math.isfinite(value) and value > 0):
        _fail(text, "a finite number > 0")
    return value


def probability(text: str) -> float:
    """Validator: a number in [0, 1] (a score or IoU threshold, a fraction)."""
    value = _float_or_nan(text)
    if not 0 <= value <= 1:  # NaN fails too
        _fail(text, "a number in [0, 1]")
    return value


def svd_rank(text: str) -> int | float:
    """Validator for truncated SVD (``minircnn.svd.compress_model``): a whole rank >= 1
    ("64") or a fraction of the full rank in (0, 1) ("0.25"). "2.5" or "1.0" are refused:
    neither is clearly one or the other."""
    try:
        return int_at_least(1)(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        _fail(text, "a whole rank >= 1 (e.g. 64) or a fraction in (0, 1) (e.g. 0.25)")
    return value


def scales(text: str) -> list[int]:
    """Validator: comma-separated image sizes in pixels (shorter sides), each >= 1, e.g.
    "160,192,224". What the network needs is checked later with ``check_scales``, once
    the checkpoint has told which network it is."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        _fail(text, "whole numbers of pixels >= 1 separated by commas (e.g. 160,192,224)")
    return values


def check_scales(values: Sequence[int], config, option: str = "--scales") -> None:
    """Refuse (UsageError naming ``option``) sizes below ``config.min_short_side``, the
    smallest image side the network described by ``config`` (a ModelConfig) takes."""
    small = [s for s in values if s < config.min_short_side]
    if small:
        raise UsageError(
            f"{option} {','.join(map(str, values))}: {small} below {config.min_short_side} px, "
            f"the smallest shorter side this network takes (feature stride {config.stride} "
            f"x RoI pooling size {config.roi_size})"
        )


def name_list(text: str) -> list[str]:
    """Validator: comma-separated names, at least one, none repeated, e.g. "car,cat,dog"
    (blanks around names and empty items, as in "car,", are ignored)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        _fail(text, "comma-separated names, at least one, none repeated, e.g. car,cat,dog")
    return names


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """Validator: ``name_list`` whose names are all among ``choices``."""

    def parse(text: str) -> list[str]:
        names = name_list(text)
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return names

    parse.__name__ = "choice_list"
    return parse
