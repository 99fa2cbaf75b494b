"""Consistent Overhead Byte Stuffing (stdlib only, Python 3.9 syntax).

``encode(data)`` returns bytes with no 0x00 in them, at most ``1 + len(data) // 254`` bytes longer;
the caller appends the 0x00 frame delimiter.  ``decode(encoded)`` reverses it and raises
``ValueError`` on malformed input.  Both work block by block (up to 254 bytes per step, using
``bytes.find`` and slicing), never byte by byte.
"""


def encode(data):
    """COBS-encode ``data`` (bytes-like); the result contains no zero byte."""
    data = bytes(data)
    n = len(data)
    out = bytearray()
    append = out.append
    find = data.find
    pos = 0
    while True:
        end = pos + 254
        if end > n:
            end = n
        z = find(0, pos, end)
        if z >= 0:
            append(z - pos + 1)
            out += data[pos:z]
            pos = z + 1
            continue  # a zero as the last byte still needs a final (empty) block
        length = end - pos
        if length == 254:
            append(255)
            out += data[pos:end]
            pos = end
            if pos == n:
                break
            continue
        append(length + 1)
        out += data[pos:end]
        break
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
