"""The exceptions of the codecs: a decoder's (``WireFormatError``) and an encoder's non-finite input."""


class WireFormatError(ValueError):
    """A packed message is malformed, truncated, corrupted or does not match the decoding codec.

    The message always says what is wrong (which field, what was expected, what was found).
    """


class NonFiniteInput(ValueError):
    """An encoder was given NaN or Inf (training has diverged, or the input is broken)."""
