"""SEV: the AMD Secure Processor's firmware model and its cryptography (seed S11, S13-S21)."""
