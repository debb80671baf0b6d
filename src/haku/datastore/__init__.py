"""Shared datastores: one driver per backend behind :class:`~haku.datastore.base.Driver`."""

from __future__ import annotations

from haku.datastore.base import (
    DataStoreError,
    Driver,
    Entry,
    InUse,
    NotOwned,
    SchemaInUse,
    SpaceNotEmpty,
    Tenant,
    TenantConnection,
    Usage,
    UserInUse,
)
from haku.datastore.settings import Settings

__all__ = ["DataStoreError", "Driver", "Entry", "InUse", "NotOwned", "SchemaInUse", "Settings",
           "SpaceNotEmpty", "Tenant", "TenantConnection", "Usage", "UserInUse", "open_driver"]


def open_driver(settings: Settings) -> Driver:
    """The driver for ``settings.driver``; imports only that backend's client library."""
    if settings.driver == "etcd":
        from haku.datastore.etcd import EtcdDriver

        return EtcdDriver(settings)
    if settings.driver == "PostgreSQL":
        from haku.datastore.postgres import PostgresDriver

        return PostgresDriver(settings)
    if settings.driver == "MySQL":
        from haku.datastore.mysql import MySQLDriver

        return MySQLDriver(settings)
    raise DataStoreError(f"DataStore {settings.name}: no driver for {settings.driver!r}")
