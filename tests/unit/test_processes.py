import json
import sys
import time
from pathlib import Path

import pytest

from haku.dev.processes import (
    ComponentFailed,
    ProcessSpec,
    Record,
    Supervisor,
    process_start_time,
)


@pytest.fixture
def sup(tmp_path: Path) -> Supervisor:
    return Supervisor(tmp_path / "pids", tmp_path / "logs")


def test_start_records_and_is_idempotent_then_stop_kills_the_group(sup: Supervisor) -> None:
    spec = ProcessSpec("sleeper", ["/bin/sh", "-c", "sleep 60 & sleep 60"])
    record, started = sup.start(spec)
    assert started and record.alive()
    again, started_again = sup.start(spec)
    assert not started_again and again.pid == record.pid
    children_file = Path(f"/proc/{record.pid}/task/{record.pid}/children")
    for _ in range(50):  # the shell forks its children a moment after it starts
        children = children_file.read_text().split()
        if children:
            break
        time.sleep(0.05)
    assert children
    assert sup.stop("sleeper", timeout=5)
    assert not record.alive()
    time.sleep(0.2)
    # The whole group went (a zombie awaiting its reaper counts as gone).
    assert all(process_start_time(int(c)) is None for c in children)
    assert sup.record("sleeper") is None
    assert not sup.stop("sleeper")


def test_a_reused_pid_is_never_taken_for_ours(sup: Supervisor) -> None:
    import os

    sup.pids.mkdir(parents=True)
    # Our own PID, but with a start time that is not ours: another program's record.
    fake = Record("ghost", os.getpid(), 1, ["x"])
    (sup.pids / "ghost.json").write_text(json.dumps(fake.__dict__))
    assert sup.running("ghost") is None
    assert not sup.stop("ghost")  # and it is not signalled


def test_a_component_that_dies_is_named_with_its_log_tail(sup: Supervisor) -> None:
    spec = ProcessSpec("crasher", [sys.executable, "-c",
                                   "import time,sys; print('bad flag --x', flush=True);"
                                   "time.sleep(0.3); sys.exit(3)"])
    sup.start(spec)
    with pytest.raises(ComponentFailed) as info:
        sup.wait_ready("crasher", lambda: False, timeout=10, what="ready")
    message = str(info.value)
    assert message.startswith("crasher exited before it was ready")
    assert "bad flag --x" in message
    assert str(sup.log_path("crasher")) in message


def test_a_component_that_never_gets_ready_times_out(sup: Supervisor) -> None:
    sup.start(ProcessSpec("slow", ["sleep", "30"]))
    with pytest.raises(ComponentFailed, match="was not serving within 1s"):
        sup.wait_ready("slow", lambda: False, timeout=1, what="serving")
    sup.stop("slow")
