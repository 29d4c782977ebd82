"""Measurement code behind ``qtrain bench`` (speed is measured here, never asserted in tests)."""
