"""Pure functions: spec and secrets in, desired objects out. No I/O here.

A spec the CRD should have refused (an object admitted before a rule existed, or written
around the API server) makes a renderer raise :class:`InvalidSpec`, naming the field, rather
than crash halfway through; the operator turns it into a Condition.
"""

from __future__ import annotations


class InvalidSpec(ValueError):
    """A TenantControlPlane spec value Haku cannot render.

    ``field`` is the spec path (``spec.networkProfile.serviceCidr``,
    ``spec.networkProfile.certSANs[2]``), ``message`` says what is wrong with it; ``str()``
    gives both."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # both in args: it pickles and copies
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"
