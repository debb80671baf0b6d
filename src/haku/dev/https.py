"""A tiny synchronous HTTPS client with client certificates, for readiness checks."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def get(url: str, ctx: ssl.SSLContext, timeout: float = 3.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=ctx,
                                       timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path or "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ok(url: str, ctx: ssl.SSLContext, timeout: float = 3.0) -> bool:
    try:
        status, _ = get(url, ctx, timeout)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def get_json(url: str, ctx: ssl.SSLContext, timeout: float = 3.0) -> dict[str, Any] | None:
    try:
        status, body = get(url, ctx, timeout)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    data: dict[str, Any] = json.loads(body)
    return data
