"""Reconcilers and their runtime: the parts of Haku that talk to the admin cluster."""
