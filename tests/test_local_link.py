"""The agent over a `local:` link: real subprocess, real files, real /proc readings."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fieldkit.errors import Cancelled, DeviceError, LinkLost
from fieldkit.devices import open_session


@pytest.fixture
def link(home, device_root: Path):
    with open_session(f"local:{device_root}", home, timeout=20) as session:
        yield session.link  # the message client itself: these tests speak the raw protocol


def test_handshake_reports_versions_and_capabilities(link, device_root: Path) -> None:
    agent = link.agent
    assert agent["proto"] == 1
    assert agent["root"] == str(device_root)
    assert set(agent["capabilities"]) == {"psutil", "onnxruntime", "numpy", "cryptography"}
    assert "health" in agent["ops"] and "put" in agent["ops"]


def test_health_reads_this_machine(link) -> None:
    raw = link.call("health", {"sample_s": 0.1})
    meminfo = Path("/proc/meminfo").read_text().split()
    assert raw["memory"]["total"] == int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    assert raw["cpu"]["count"] == os.cpu_count()
    assert 0.0 <= raw["cpu"]["percent"] <= 100.0
    assert raw["uptime_s"] > 0
    labels = [d["label"] for d in raw["disks"]]
    assert labels[:2] == ["root", "models"]
    assert abs(raw["time"] - time.time()) < 5


def test_upload_lands_with_the_right_digest(link, device_root: Path, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    res = link.upload(src, "/var/lib/fieldkit/staging/blob.bin", sha256=digest,
                      progress=lambda done, total: seen.append(done))
    landed = device_root / "var/lib/fieldkit/staging/blob.bin"
    assert res == {"path": "/var/lib/fieldkit/staging/blob.bin", "size": len(data), "sha256": digest}
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == digest
    assert seen[-1] == len(data)
    assert not landed.with_name("blob.bin.part").exists()


def test_upload_digest_mismatch_is_refused_and_nothing_lands(link, device_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(b"x" * 100_000)
    with pytest.raises(DeviceError, match="sha256") as err:
        link.upload(src, "/var/lib/fieldkit/staging/blob.bin", sha256="0" * 64)
    assert err.value.code == "digest_mismatch"
    assert not (device_root / "var/lib/fieldkit/staging/blob.bin").exists()
    assert link.call("ping")  # link still healthy


def test_upload_resumes_from_a_partial_file(link, device_root: Path, tmp_path: Path) -> None:
    data = os.urandom(1_000_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    staged = device_root / "var/lib/fieldkit/staging/blob.bin.part"
    staged.write_bytes(data[:400_000])  # what a pulled cable left behind
    st = link.call("stat", {"path": "/var/lib/fieldkit/staging/blob.bin"})
    assert st["partial_size"] == 400_000
    res = link.upload(src, "/var/lib/fieldkit/staging/blob.bin", offset=st["partial_size"],
                      sha256=hashlib.sha256(data).hexdigest())
    assert res["size"] == len(data)
    assert (device_root / "var/lib/fieldkit/staging/blob.bin").read_bytes() == data


def test_paths_cannot_leave_the_device_root(link) -> None:
    with pytest.raises(DeviceError, match="leaves the device root"):
        link.call("stat", {"path": "/../../etc/passwd"})


def test_unknown_operation_is_refused_clearly(link) -> None:
    with pytest.raises(DeviceError, match="no operation 'frobnicate'") as err:
        link.call("frobnicate")
    assert err.value.exit_code == 4


def test_cancel_stops_the_operation_on_the_device(link) -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        link.call("sleep", {"seconds": 30}, cancel=cancel)
    assert time.monotonic() - t0 < 5
    assert link.call("ping")


def test_concurrent_calls_share_one_link(link) -> None:
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(link.call("ping"))) for _ in range(8)]
    slow = threading.Thread(target=lambda: results.append(link.call("sleep", {"seconds": 0.3})))
    slow.start()
    for t in threads:
        t.start()
    for t in threads + [slow]:
        t.join(10)
    assert len(results) == 9


def test_a_silent_peer_is_detected_within_seconds(home, device_root: Path) -> None:
    lk = open_session(f"local:{device_root}", home, timeout=20, dead_after_s=2.0).link
    proc = lk._stream.proc
    os.kill(proc.pid, signal.SIGSTOP)  # the device freezes: no answers, no EOF
    try:
        t0 = time.monotonic()
        with pytest.raises(LinkLost, match="no answer"):
            lk.call("ping", timeout=30)
        assert time.monotonic() - t0 < 6
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        lk.close()
    assert proc.wait(5) is not None  # the dead link's agent was ended: no orphan
