"""The exceptions of the codecs: a decoder's (``WireFormatError``) and an encoder's input that it
cannot encode (``NonFiniteInput``, ``OutOfRangeInput``)."""


class WireFormatError(ValueError):
    """A packed message is malformed, truncated, corrupted or does not match the decoding codec.

    The message always says what is wrong (which field, what was expected, what was found).
    """


class NonFiniteInput(ValueError):
    """An encoder was given NaN or Inf (training has diverged, or the input is broken)."""


class OutOfRangeInput(NonFiniteInput):
    """An encoder was given finite values beyond float32's range (float64 input above 3.4e38): the
    codecs compute in float32, where they would be Inf. A ``NonFiniteInput``, so that the engines
    say what they say of any input a codec cannot encode (``engine.divergence.non_finite_encode``:
    finite, but overflows float32)."""
