"""argparse ``type=`` converters shared by the command line (:mod:`aotfmm.cli`) and the
benchmark harness (:mod:`aotfmm._bench`), so that neither imports the other."""
import argparse


def _int_in(lo, hi=None):
    """argparse type: an integer in [lo, hi] (argparse names the option in its message);
    written as an integer or, for counts, with an exponent (1e5, 2.5e3) when that is one."""
    what = f"an integer from {lo} to {hi}" if hi is not None else \
        ("a positive integer" if lo == 1 else f"an integer >= {lo}")

    def convert(text):
        try:
            value = int(text)
        except ValueError:
            try:  # 1e5: an integer exactly (below 2^53, where floats hold every integer)
                number = float(text)
            except ValueError:
                number = None
            if number is None or not (number.is_integer() and abs(number) < 2.0 ** 53):
                raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
            value = int(number)
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {text!r}")
        return value
    return convert


_positive_int = _int_in(1)


def _eps(text):
    """argparse type: a number in (0, 1) (an accuracy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value
