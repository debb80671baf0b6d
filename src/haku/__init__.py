"""Haku: hosted Kubernetes control planes, as pods."""

__version__ = "0.1.0"
