"""Consistent Overhead Byte Stuffing (stdlib only, Python 3.6 syntax).

``encode(data)`` returns bytes with no 0x00 in them, at most ``1 + len(data) // 254`` bytes longer;
the caller appends the 0x00 frame delimiter.  ``decode(encoded)`` reverses it and raises
``ValueError`` on malformed input.  Both work block by block (``bytes.split`` / slicing, up to
254 bytes per step), never byte by byte.
"""


def encode(data):
    """COBS-encode ``data`` (bytes-like); the result contains no zero byte."""
    out = bytearray()
    append = out.append
    for seg in bytes(data).split(b"\x00"):
        n = len(seg)
        if n < 254:
            append(n + 1)
            out += seg
            continue
        pos = 0
        while n - pos >= 254:  # full blocks carry no implied zero
            append(255)
            out += seg[pos:pos + 254]
            pos += 254
        append(n - pos + 1)
        out += seg[pos:]
    return bytes(out)


def decode(enc):
    """Decode one COBS block sequence (without its 0x00 delimiter); ValueError if malformed."""
    n = len(enc)
    if n == 0:
        raise ValueError("empty COBS frame")
    if enc.find(0) >= 0:
        raise ValueError("zero byte inside a COBS frame")
    out = bytearray()
    pos = 0
    while pos < n:
        code = enc[pos]
        end = pos + code
        if end > n:
            raise ValueError("COBS block runs past the end of the frame")
        out += enc[pos + 1:end]
        pos = end
        if code != 255 and pos < n:
            out.append(0)
    return bytes(out)


def max_encoded_len(n):
    """Upper bound of ``len(encode(data))`` for ``len(data) == n``."""
    return n + 1 + n // 254
