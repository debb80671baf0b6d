"""Test helpers: a raw HTTP/1.1 GET over a real socket, and Prometheus text parsed to samples."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http(port: int, path: str, method: str = "GET",
               raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) from 127.0.0.1:``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw if raw is not None else
                 f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: Samples, metric: str, /, **labels: str) -> float | None:
    return all_samples.get((metric, frozenset(labels.items())))


Labels = frozenset[tuple[str, str]]


def matching(all_samples: Samples, metric: str, /, **labels: str) -> dict[Labels, float]:
    """Samples of ``metric`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lbl: v for (n, lbl), v in all_samples.items() if n == metric and want <= lbl}
