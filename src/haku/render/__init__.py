"""Pure functions: spec and secrets in, desired objects out. No I/O here."""
