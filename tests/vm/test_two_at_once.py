"""Two `flightrec vm record` started together both record: each VM has its own
scratch folder, virtiofsd sockets (and their pid-file locks), console and
kernel (so its own /run/flightrec, namespaces and tracefs); the kernel and
initramfs caches are only read once warm. Nothing of either is left."""

from __future__ import annotations

import json
import subprocess

import pytest

from vmkit import REPO, assert_nothing_left, flightrec, vm_env

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_two_vm_records_started_together_both_record(guest_kernel, artifacts_dir, tmp_path):
    if guest_kernel.vmlinux is None:
        pytest.skip(f"no debug vmlinux for {guest_kernel.release}")
    runs = {}
    for name in "ab":
        tmp, out = tmp_path / f"tmp-{name}", artifacts_dir / f"vm-two-at-once-{name}"
        proc = subprocess.Popen(
            flightrec("vm", "record", "-o", str(out), "--duration", "5"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=vm_env(tmp),
            cwd=REPO,
        )
        runs[name] = (proc, tmp, out)
    outputs = {}
    try:
        for name, (proc, _, _) in runs.items():
            outputs[name] = proc.communicate(timeout=420)[0]
    finally:
        for proc, _, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    argvs = []
    for name, (proc, tmp, out) in runs.items():
        text = outputs[name]
        print(text[-3000:])  # kept in the CI log on failure
        assert proc.returncode == 0, text[-2000:]
        assert "verdict: clean" in text
        meta = json.loads((out / "meta.json").read_text())
        assert meta["outcome"] == "clean" and meta["kernel_events"]["backend"] == "kprobes"
        trace = (out / "trace.txt").read_text(errors="replace")
        assert "rx_reserve" in trace and "tracing_mark_write" in trace
        argvs.append(json.loads((out / "vm.json").read_text())["guest"]["qemu_argv"])
        assert_nothing_left(tmp, text)
    # Their own sockets: nothing shared but the read-only caches.
    sockets = [{a for a in argv if ".sock" in a} for argv in argvs]
    assert sockets[0] and not sockets[0] & sockets[1]
