"""Checks for the fields of the laptop's messages (stdlib only, Python 3.6 syntax).

Every value that arrives in a message is checked here before it is used: a wrong type or an
out-of-range value becomes a :class:`~fieldkit.agent.protocol.RemoteError` with code
``bad_args`` (or ``bad_request`` for the message itself) and a message that names the field,
never a ``TypeError`` somewhere deeper. Echoed user input is shortened (:func:`shorten`).
"""

from fieldkit.agent.protocol import RemoteError

MAX_ID = 2 ** 53 - 1          # request ids: whole numbers 0..MAX_ID (exact in every JSON reader)
MAX_OP = 64                   # characters of an operation name
MAX_PATH = 4096               # characters of a device path (Linux PATH_MAX)
MAX_TEXT = 2000               # characters of an error message sent back
ECHO = 200                    # characters of user input echoed in a message


def shorten(value, limit=ECHO):
    """``value`` as text for a message: its first ``limit`` characters, then "…" if cut."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        return text[:limit] + "\u2026"
    return text


def is_int(value):
    """A JSON whole number: int but not bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and value not in (float("inf"), float("-inf")))


def valid_id(value):
    """True when ``value`` can identify a request (and be echoed in a reply)."""
    return is_int(value) and 0 <= value <= MAX_ID


def bad(message, code="bad_args"):
    return RemoteError(code, message)


def get_int(args, key, default=None, lo=None, hi=None, required=False):
    value = args.get(key)
    if value is None:
        if required:
            raise bad("%s is required (a whole number)" % key)
        return default
    if isinstance(value, float) and is_number(value) and value.is_integer():
        value = int(value)
    if not is_int(value):
        raise bad("%s must be a whole number%s, got %s" % (key, _range(lo, hi), _show(value)))
    if lo is not None and value < lo:
        raise bad("%s must be a whole number >= %s, got %s" % (key, lo, value))
    if hi is not None and value > hi:
        raise bad("%s must be a whole number <= %s, got %s" % (key, hi, shorten(str(value), 40)))
    return value


def get_float(args, key, default=None, lo=None, hi=None, positive=False):
    value = args.get(key)
    if value is None:
        return default
    what = "a positive number" if positive else "a number"
    if not is_number(value):
        raise bad("%s must be %s, got %s" % (key, what, _show(value)))
    if (positive and not value > 0) or (lo is not None and value < lo):
        raise bad("%s must be %s%s, got %s" % (key, what, "" if lo is None else " >= %s" % lo, value))
    if hi is not None and value > hi:
        raise bad("%s must be %s <= %s, got %s" % (key, what, hi, value))
    return float(value)


def get_str(args, key, default=None, required=False, limit=MAX_PATH, choices=None):
    value = args.get(key)
    if value is None:
        if required:
            raise bad("%s is required" % key)
        return default
    if not isinstance(value, str) or not value or "\x00" in value:
        raise bad("%s must be a non-empty text, got %s" % (key, shorten(value, 40)))
    if len(value) > limit:
        raise bad("%s is %d characters long; the limit is %d" % (key, len(value), limit))
    if choices is not None and value not in choices:
        raise bad("%s must be one of %s, got %s" % (key, ", ".join(choices), shorten(value, 40)))
    return value


def get_bool(args, key, default=False):
    value = args.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad("%s must be true or false, got %s" % (key, shorten(value, 40)))
    return value


def get_dict(args, key, default=None):
    value = args.get(key)
    if value is None:
        return {} if default is None else default
    if not isinstance(value, dict):
        raise bad("%s must be an object, got %s" % (key, type(value).__name__))
    return value


def get_sha256(args, key):
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise bad("%s must be 64 lowercase hex digits, got %s" % (key, shorten(value, 80)))
    return value


def _show(value):
    """A wrong value for a message: texts quoted (so "20" is not taken for 20), shortened."""
    return shorten(repr(value) if isinstance(value, str) else value, 40)


def _range(lo, hi):
    if lo is not None and hi is not None:
        return " from %s to %s" % (lo, hi)
    if lo is not None:
        return " >= %s" % lo
    if hi is not None:
        return " <= %s" % hi
    return ""
