"""The one exception a decoder raises."""


class WireFormatError(ValueError):
    """A packed message is malformed, truncated, corrupted or does not match the decoding codec.

    The message always says what is wrong (which field, what was expected, what was found).
    """
