"""The local admin cluster: upstream binaries built from Go modules, run as plain processes.

Used by ``make demo`` and by the test fixtures. Nothing here is needed to run Haku against a
real admin cluster.
"""
