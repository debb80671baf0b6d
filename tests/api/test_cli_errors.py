"""Bad input to the CLI gives a clear message and a non-zero exit, never a hang.

These run the real `haku` command and ask the Go module proxy, hence the api tier.
"""

from __future__ import annotations

import subprocess
import sys


def haku(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "haku", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_an_unknown_kubernetes_version_names_the_versions_that_exist() -> None:
    result = haku("dev", "build", "kubernetes", "--kubernetes-version", "v1.37.99")
    assert result.returncode == 1
    assert "k8s.io/kubernetes@v1.37.99 cannot be fetched" in result.stderr
    assert "versions the proxy serves include" in result.stderr
    assert "v1.37.2" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_version_is_refused_before_anything_runs() -> None:
    result = haku("dev", "up", "--kubernetes-version", "1.37", "--state-dir", "/nonexistent/x")
    assert result.returncode == 1
    assert "is not of the form vMAJOR.MINOR.PATCH" in result.stderr


def test_status_of_a_cluster_that_is_not_up_exits_non_zero() -> None:
    result = haku("dev", "status", "--api-only", "--state-dir", "/nonexistent/haku-status")
    assert result.returncode == 3
    assert "stopped" in result.stdout
