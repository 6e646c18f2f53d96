"""Temporary: re-exports while the verifier moves into this package."""
from transforms.verifier import VerifierConfig, VerifierPool, usable_cores, verify_table  # noqa: F401
