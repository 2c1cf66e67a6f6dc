"""End-to-end tests of the C forwarder (c/forwarder) on real veths, namespaces and tracefs.

Each test builds its own topology with `ip`:

    netns frt-N-cl (c0 10.201.0.1) <-> netns frt-N-fo (outer) ~forwarder~
    netns frt-N-fi (inner) <-> netns frt-N-sv (s0 10.201.0.2)

and a private tracefs instance, runs the binary, reads the instance's trace,
and removes all of it again. They skip with the reason when the machine
cannot run them (not root, binary not built, no AF_XDP, no tracefs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from flightrec import locate
from flightrec.parse.fields import parse_markers

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
BINARY = locate.program("forwarder")
STAMP = locate.program("stamp")
STAMP_PORT = 5203
TRACEFS = Path("/sys/kernel/tracing")
QUEUES = 2
PREFIX = f"frt-{os.getpid() % 100000}"
CLIENT_IP, SERVER_IP = "10.201.0.1", "10.201.0.2"

# The marker grammar of docs/markers.md.
TRANSITION = re.compile(r"^[A-Za-z][\w.-]* q:\d+ 0x[0-9a-f]+ (FREE|FILL|RX|TX|COMP) -> (FREE|FILL|RX|TX|COMP)$")
NOTE = re.compile(r"^0x[0-9a-f]+ \w+( \w+)*$")
DETECTION = re.compile(
    r"^[A-Za-z][\w.-]* q:\d+ 0x[0-9a-f]+ (FREE|FILL|RX|TX|COMP) -> (FREE|FILL|RX|TX|COMP): "
    r"(expected 0x[0-9a-f]+ ?remaining: \[[0-9a-fx, .…]*\]|len \d+ xdp_len \d+|invalid, was [A-Z]+"
    r"|payload expected (\d+|\?) found (\d+|\?) at \d+ len \d+ stamped (\d+|\?))$"
)
AF_XDP = 44


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def why_cannot_run() -> Optional[str]:
    """The reason these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, tracefs)"
    if not BINARY.exists() or not (BINARY.parent / "xdp_meta.bpf.o").exists():
        return f"forwarder not built ({BINARY}); run `make build`"
    for tool in ("ip", "iperf3", "ethtool", "ping"):
        if not shutil.which(tool):
            return f"{tool} not installed (apt-get install iproute2 iperf3 ethtool iputils-ping)"
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        return f"AF_XDP sockets unavailable ({e}); needs CONFIG_XDP_SOCKETS"
    if not (TRACEFS / "instances").is_dir():
        sh("mount", "-t", "tracefs", "nodev", str(TRACEFS), check=False)
        if not (TRACEFS / "instances").is_dir():
            return f"tracefs not mounted at {TRACEFS} and mounting it failed"
    return None


def ns_path(role: str) -> str:
    return f"/run/netns/{PREFIX}-{role}"


def nsexec(role: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{role}", *argv]


def leftovers() -> list[str]:
    """Namespaces, links and tracefs instances of ours still on the machine."""
    found = [n.split()[0] for n in sh("ip", "netns", "list").stdout.splitlines() if n.startswith(PREFIX)]
    found += [w for w in sh("ip", "-o", "link", "show").stdout.split() if w.startswith(PREFIX.replace("-", ""))]
    inst = TRACEFS / "instances"
    if inst.is_dir():
        found += [str(p) for p in inst.iterdir() if p.name.startswith(PREFIX)]
    return found


def teardown_topology() -> None:
    for role in ("cl", "fo", "fi", "sv"):
        pids = sh("ip", "netns", "pids", f"{PREFIX}-{role}", check=False).stdout.split()
        for pid in pids:  # iperf3 and the like we started inside
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        # deleting a namespace deletes the veth ends in it, and with them their peers
        sh("ip", "netns", "del", f"{PREFIX}-{role}", check=False)
    short = PREFIX.replace("-", "")
    for name in (f"{short}c", f"{short}s"):
        sh("ip", "link", "del", name, check=False)


def build_topology() -> None:
    short = PREFIX.replace("-", "")  # names in the root ns are at most 15 chars
    for role in ("cl", "fo", "fi", "sv"):
        sh("ip", "netns", "add", f"{PREFIX}-{role}")
    q = str(QUEUES)
    for end, peer in ((f"{short}c", f"{short}o"), (f"{short}s", f"{short}i")):
        sh(
            "ip",
            "link",
            "add",
            end,
            "numtxqueues",
            q,
            "numrxqueues",
            q,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "numtxqueues",
            q,
            "numrxqueues",
            q,
        )
    for name, role, newname in (
        (f"{short}c", "cl", "c0"),
        (f"{short}o", "fo", "outer"),
        (f"{short}i", "fi", "inner"),
        (f"{short}s", "sv", "s0"),
    ):
        sh("ip", "link", "set", name, "netns", f"{PREFIX}-{role}", "name", newname)
        sh(*nsexec(role, "ip", "link", "set", newname, "up"))
        sh(*nsexec(role, "ip", "link", "set", "lo", "up"))
    sh(*nsexec("cl", "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "c0"))
    sh(*nsexec("sv", "ip", "addr", "add", f"{SERVER_IP}/24", "dev", "s0"))
    # Forwarded through AF_XDP copy mode, a CHECKSUM_PARTIAL packet arrives with
    # a bad checksum, and a TSO super-packet does not fit a frame: the
    # endpoints compute checksums and segment themselves.
    for role, dev in (("cl", "c0"), ("sv", "s0")):
        sh(*nsexec(role, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"))


@pytest.fixture(scope="module")
def topology() -> Iterator[None]:
    why = why_cannot_run()
    if why:
        pytest.skip(why)
    teardown_topology()
    try:
        build_topology()
    except subprocess.CalledProcessError as e:
        teardown_topology()
        pytest.skip(f"cannot build the veth/netns topology: {e.stderr.strip()}")
    yield
    teardown_topology()
    assert leftovers() == [], "teardown left namespaces, links or instances behind"


@pytest.fixture
def instance(topology) -> Iterator[Path]:
    """A private tracefs instance, removed after the test."""
    path = TRACEFS / "instances" / f"{PREFIX}-{os.urandom(3).hex()}"
    path.mkdir()
    try:
        (path / "buffer_size_kb").write_text("4096\n")
        (path / "tracing_on").write_text("1\n")
        yield path
    finally:
        for _ in range(20):  # rmdir fails with EBUSY while a reader still holds it open
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def forwarder_argv(*extra: str) -> list[str]:
    return [
        str(BINARY),
        "--outer",
        f"{ns_path('fo')}:outer",
        "--inner",
        f"{ns_path('fi')}:inner",
        "--queues",
        str(QUEUES),
        *extra,
    ]


@contextmanager
def running_forwarder(*extra: str) -> Iterator[subprocess.Popen]:
    """The forwarder with ``extra`` options, text pipes; killed on the way out if still running."""
    proc = subprocess.Popen(forwarder_argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def marker_lines(trace: str) -> list[str]:
    return [line.split("tracing_mark_write: ", 1)[1] for line in trace.splitlines() if "tracing_mark_write: " in line]


def descriptor_events(lines: list[str]) -> list[tuple]:
    """(sock, queue, addr, from, to, detail) of every descriptor in the marker
    lines, batched lines expanded as flightrec's parser does."""
    return [m for line in lines for m in (parse_markers(line) or [])]


def wait_ready(proc: subprocess.Popen, timeout: float = 10) -> dict:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "ready":
            return event
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"forwarder never said ready: {err}")


class Traffic:
    """iperf3 server in the server namespace and clients in the client's."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start_server(self) -> None:
        self.procs.append(
            subprocess.Popen(nsexec("sv", "iperf3", "-s"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        time.sleep(0.5)

    def client(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            nsexec("cl", "iperf3", "-c", SERVER_IP, "-J", *args), capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def traffic(topology) -> Iterator[Traffic]:
    t = Traffic()
    try:
        yield t
    finally:
        t.stop()


def test_help_has_examples() -> None:
    if not BINARY.exists():
        pytest.skip(f"forwarder not built ({BINARY}); run `make build`")
    out = sh(str(BINARY), "--help")
    assert "Examples:" in out.stdout and "--inject" in out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--outer", "nocolon", "--inner", "-:inner"],
        ["--outer", "-:a", "--inner", "-:b", "--queues", "0"],
        ["--outer", "-:a", "--inner", "-:b", "--inject", "bogus"],
        ["--inner", "-:b"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str]) -> None:
    if not BINARY.exists():
        pytest.skip(f"forwarder not built ({BINARY}); run `make build`")
    out = sh(str(BINARY), *argv, check=False)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("forwarder: ")


def test_missing_interface_is_setup_error(topology) -> None:
    out = sh(str(BINARY), "--outer", f"{ns_path('fo')}:nosuchdev", "--inner", f"{ns_path('fi')}:inner", check=False)
    assert out.returncode == 2
    assert "no interface nosuchdev" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form", ["batched", "per-descriptor"])
def test_forwards_tcp_and_udp_with_markers(form: str, instance: Path, traffic: Traffic, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    with running_forwarder(
        "--trace-dir",
        str(instance),
        "--duration",
        "12",
        "--stats",
        str(stats),
        "--markers",
        form,
        "--payload-port",
        str(STAMP_PORT),
    ) as proc:
        ready = wait_ready(proc)
        assert ready["socks"] == ["outer q:0", "outer q:1", "inner q:0", "inner q:1"]
        ping = sh(*nsexec("cl", "ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_IP), check=False)
        assert ping.returncode == 0, ping.stdout
        delivered = tcp_and_stamped_udp(traffic, tmp_path, seconds=4, streams=8)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    received = delivered()
    evs = events(out)
    assert evs[-1]["event"] == "exit" and evs[-1]["reason"] == "duration"
    assert any(e["event"] == "stats" for e in evs)
    final = json.loads(stats.read_text())
    assert final["exit_code"] == 0
    busy = [p["sock"] for p in final["ports"] if p["rx"] > 100]
    assert len(busy) >= 3, f"expected several busy queues, got {final['ports']}"
    # the XDP program's length made it to the forwarder, so the len check ran
    assert sum(p["meta_checked"] for p in final["ports"]) > 1000
    # and the forwarder checked the stamped payloads on their way through
    assert sum(p["payload_checked"] for p in final["ports"]) >= received["received"]

    lines = marker_lines((instance / "trace").read_text())
    if form == "per-descriptor":
        bad = [ln for ln in lines if not (TRANSITION.match(ln) or NOTE.match(ln))]
    else:
        bad = [ln for ln in lines if parse_markers(ln) is None or len(ln) > 1000]
        # one line per ring operation: many descriptors a line
        assert len(descriptor_events(lines)) > 4 * len(lines)
    assert bad == [], f"lines outside the marker grammar: {bad[:5]}"
    moves = [(m[3], m[4]) for m in descriptor_events(lines)]
    assert moves.count(("FILL", "RX")) >= 1000
    assert ("RX", "TX") in moves and ("COMP", "FILL") in moves and ("TX", "COMP") in moves
    assert (instance / "tracing_on").read_text().strip() == "1"


@pytest.mark.slow
@pytest.mark.parametrize("form", ["batched", "per-descriptor"])
@pytest.mark.parametrize("kind", ["double-fill", "fill-and-tx", "reuse-in-flight"])
def test_injected_bug_is_caught(kind: str, form: str, instance: Path, traffic: Traffic, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    # Few frames: the injected FILL entry comes out of RX soon, so the trace
    # still holds the injection when the forwarder catches it.
    with running_forwarder(
        "--trace-dir",
        str(instance),
        "--duration",
        "20",
        "--frames",
        "1024",
        "--inject",
        kind,
        "--inject-after",
        "2000",
        "--stats",
        str(stats),
        "--markers",
        form,
    ) as proc:
        wait_ready(proc)
        traffic.start_server()
        client = subprocess.Popen(
            nsexec("cl", "iperf3", "-c", SERVER_IP, "-t", "8", "-P", "4"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        traffic.procs.append(client)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    anomaly = [e for e in events(out) if e["event"] == "anomaly"]
    assert len(anomaly) == 1 and anomaly[0]["tracing_stopped"] is True

    assert (instance / "tracing_on").read_text().strip() == "0"
    lines = marker_lines((instance / "trace").read_text())
    assert DETECTION.match(lines[-1]), f"trace does not end with a detection line: {lines[-3:]}"
    assert lines[-1] == anomaly[0]["line"]
    addr = int(anomaly[0]["addr"], 16)
    mine = [(m[3], m[4]) for m in descriptor_events(lines[:-1]) if m[0] is not None and m[2] == addr]
    if kind == "double-fill":
        # the injected resubmit: two FILL entries in a row for the caught descriptor
        assert any(a[1] == b[1] == "FILL" for a, b in zip(mine, mine[1:])), mine[-8:]
    elif kind == "fill-and-tx":
        # the injected entry: into FILL while on its way to TX
        assert ("RX", "FILL") in mine, mine[-8:]
    else:
        # reuse-in-flight: RX -> TX, then COMP -> FILL with no TX -> COMP between
        reuse = [i for i, (a, b) in enumerate(zip(mine, mine[1:])) if a == ("RX", "TX") and b == ("COMP", "FILL")]
        assert reuse, mine[-8:]
        # The real completion is the detection, and what it says the frame was is where
        # the trace left it after the reuse: still in FILL, received into (RX), or (COMP)
        # received, sent a second time and completed once, the second completion caught.
        after = mine[reuse[-1] + 2 :]
        was = after[-1][1] if after else "FILL"
        assert lines[-1].endswith(f"TX -> COMP: invalid, was {was}"), (lines[-1], after)
        if was == "COMP":
            assert ("RX", "TX") in after and ("TX", "COMP") in after, after
        else:
            assert was in ("FILL", "RX"), after

    final = json.loads(stats.read_text())
    assert final["exit_code"] == 3 and final["injected"] is True
    rings = final["ports"][0]["rings"]
    assert set(rings) == {"rx", "tx", "fill", "comp"}
    assert "xdp_statistics" in final["ports"][0]


def test_sigterm_exits_clean_and_detaches(topology) -> None:
    with running_forwarder("--no-markers") as proc:
        wait_ready(proc)
        assert "xdp" in sh(*nsexec("fo", "ip", "link", "show", "outer")).stdout
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert events(out)[-1]["reason"] == "signal"
    for role, dev in (("fo", "outer"), ("fi", "inner")):
        assert " xdp" not in sh(*nsexec(role, "ip", "link", "show", dev)).stdout


def stamp_recv(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """c/stamp's receiver in the server namespace, once it listens."""
    proc = subprocess.Popen(
        [
            str(STAMP),
            "recv",
            "--netns",
            ns_path("sv"),
            "--bind",
            f"{SERVER_IP}:{STAMP_PORT}",
            "--stats",
            str(tmp_path / "recv.json"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if '"ready"' not in proc.stdout.readline():
        proc.kill()
        pytest.fail(f"stamp recv did not start: {proc.communicate()[1]}")
    return proc


def stamp_send(tmp_path: Path, *extra: str) -> dict:
    out = sh(
        str(STAMP),
        "send",
        "--netns",
        ns_path("cl"),
        "--to",
        f"{SERVER_IP}:{STAMP_PORT}",
        "--stats",
        str(tmp_path / "send.json"),
        *extra,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads((tmp_path / "send.json").read_text())


def tcp_and_stamped_udp(traffic: Traffic, tmp_path: Path, seconds: int, streams: int):
    """iperf3 TCP for `seconds` over `streams`, then 2 s of stamped UDP at 10 kpps;
    returns the check, to call once the forwarder has exited: the TCP data
    arrived, and every stamped datagram that arrived was whole (its stats)."""
    traffic.start_server()
    tcp = json.loads(traffic.client("-t", str(seconds), "-P", str(streams)).stdout)
    # UDP from c/stamp, not iperf3: iperf3 (3.12) opens each UDP stream with
    # one datagram and waits for the reply without retrying, so one packet
    # the forwarder drops for an empty FILL ring hangs it (seen on a fresh
    # CI machine). stamp needs no handshake, and its payloads are checked.
    recv = stamp_recv(tmp_path, "--duration", "4")
    sent = stamp_send(tmp_path, "--rate", "10000", "--duration", "2", "--flows", "4")
    recv.communicate(timeout=30)

    def delivered() -> dict:
        assert tcp["end"]["sum_received"]["bytes"] > 1_000_000
        received = json.loads((tmp_path / "recv.json").read_text())
        assert recv.returncode == 0 and received["corrupt"] == 0, received
        assert received["received"] > 1000 and sent["sent"] >= received["received"], (sent, received)
        return received

    return delivered


def analyze(trace: Path, code: int = 1) -> dict:
    """`flightrec analyze --json` of the trace, which must exit with `code` (1: an anomaly)."""
    out = subprocess.run(
        ["python3", "-m", "flightrec", "analyze", "--json", str(trace)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == code, out.stdout + out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_payload_flipped_after_forwarding_is_caught_by_the_receiver(instance: Path, tmp_path: Path) -> None:
    """The done-when of issue 13: bytes flipped in frames the forwarder already
    checked and forwarded; the receiving side catches every one."""
    if not STAMP.exists():
        pytest.skip(f"{STAMP} not built; run `make build`")
    count = 40
    stats = tmp_path / "fwd.json"
    recv = None
    with running_forwarder(
        "--trace-dir",
        str(instance),
        "--duration",
        "30",
        "--stats",
        str(stats),
        "--payload-port",
        str(STAMP_PORT),
        "--inject",
        "flip-payload",
        "--inject-count",
        str(count),
        "--inject-after",
        "500",
    ) as proc:
        try:
            wait_ready(proc)
            sh(*nsexec("cl", "ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER_IP), check=False)  # ARP
            recv = stamp_recv(tmp_path, "--keep-going", "--trace-dir", str(instance))
            # 61 * 40 stamped packets reach the last flip: 5 s at 4 kpps is plenty
            sent = stamp_send(tmp_path, "--rate", "4000", "--duration", "5", "--len", "64-1472")
            time.sleep(0.5)
            recv.send_signal(signal.SIGTERM)
            recv.communicate(timeout=10)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if recv is not None and recv.poll() is None:
                recv.kill()
                recv.communicate()
    assert proc.returncode == 0, err  # nothing the forwarder itself can see
    final = json.loads(stats.read_text())
    got = json.loads((tmp_path / "recv.json").read_text())
    flipped = final["flipped"]
    assert len(flipped) == count, f"only {len(flipped)} flips planted; sent {sent}"
    assert sum(p["payload_checked"] for p in final["ports"]) >= sent["sent"] - 10
    # every one caught, and nothing else (a flipped datagram lost on the way
    # would show here: the loss is in the message)
    lost = sent["sent"] - got["received"]
    assert sorted(got["corrupt_pkts"]) == sorted(flipped) and got["corrupt"] == count, f"{lost} datagrams lost"
    assert recv.returncode == 3

    # The receiver's first finding is in the trace, tracing stopped there, and
    # the analyzer ties it to the frame the forwarder checked that packet in.
    assert (instance / "tracing_on").read_text().strip() == "0"
    saved = tmp_path / "trace.txt"
    saved.write_text((instance / "trace").read_text())
    lines = marker_lines(saved.read_text())
    first = [ln for ln in lines if ln.startswith("receiver udp:")]
    assert len(first) == 1 and first[0] == got["first"], first
    pkt = int(first[0].split()[4])
    notes = [m for m in descriptor_events(lines) if m[0] is None and m[5].endswith(f" forward pkt {pkt}")]
    assert notes, f"no forward note for packet {pkt}"
    frame = f"{notes[-1][2]:#x}"
    result = analyze(saved)
    corrupt = [a for a in result["anomalies"] if a["kind"] == "payload_corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["addr"] == frame, result["anomalies"][:2]
    assert corrupt[0]["verdict"] == "undetermined" and corrupt[0]["sock"].startswith("inner q:")


@pytest.mark.slow
def test_stale_payload_is_caught_by_the_forwarder(instance: Path, tmp_path: Path) -> None:
    """A packet carrying its flow's previous packet's body under its own header:
    the forwarder's check names the packet whose data it found, and stops."""
    if not STAMP.exists():
        pytest.skip(f"{STAMP} not built; run `make build`")
    with running_forwarder("--trace-dir", str(instance), "--duration", "30", "--payload-port", str(STAMP_PORT)) as proc:
        wait_ready(proc)
        sh(*nsexec("cl", "ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER_IP), check=False)
        stamp_send(tmp_path, "--rate", "4000", "--duration", "3", "--flows", "4", "--stale-every", "1000")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    [anomaly] = [e for e in events(out) if e["event"] == "anomaly"]
    assert anomaly["kind"] == "payload" and anomaly["tracing_stopped"] is True
    words = anomaly["line"].split()
    pkt, found = int(words[8]), int(words[10])
    # flow f's packet 1000k (number 4 * 1000k + f) carries the body of its packet before (4 fewer)
    assert pkt // 4 % 1000 == 0 and found == pkt - 4, anomaly["line"]
    lines = marker_lines((instance / "trace").read_text())
    assert DETECTION.match(lines[-1]) and lines[-1] == anomaly["line"]
    saved = tmp_path / "trace.txt"
    saved.write_text((instance / "trace").read_text())
    [a] = [x for x in analyze(saved)["anomalies"] if x["kind"] == "payload_mismatch"]
    assert a["addr"] == anomaly["addr"] and f"packet {pkt} held packet {found}'s data" in a["explanation"]


@pytest.mark.slow
def test_tx_twins_share_each_queue_s_completion_ring(instance: Path, traffic: Traffic, tmp_path: Path) -> None:
    """--tx-twins: a second, TX-only socket on every queue, bound beside the
    first on another CPU, sends every other RX batch; its completions come back
    on the COMPLETION ring it shares with the first, which that socket's thread
    reads. On this kernel (which carries 30f241fcf52a) that forwards clean."""
    if not STAMP.exists():
        pytest.skip(f"{STAMP} not built; run `make build`")
    stats = tmp_path / "stats.json"
    with running_forwarder(
        "--trace-dir",
        str(instance),
        "--duration",
        "10",
        "--stats",
        str(stats),
        "--payload-port",
        str(STAMP_PORT),
        "--tx-twins",
    ) as proc:
        ready = wait_ready(proc)
        assert ready["tx_twins"] is True and ready["bind"] == "copy", ready
        sh(*nsexec("cl", "ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER_IP), check=False)  # ARP
        delivered = tcp_and_stamped_udp(traffic, tmp_path, seconds=3, streams=4)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    delivered()

    final = json.loads(stats.read_text())
    ports = {p["sock"]: p for p in final["ports"]}
    for sock in ("outer q:0", "inner q:0"):
        twin = ports[sock]["twin"]
        # both sockets of the busy queues sent, from different CPUs
        assert twin["tx"] > 1000 and ports[sock]["tx"] > 1000, ports[sock]
        assert twin["cpu"] != ports[sock]["cpu"] and twin["mode"] == "copy", ports[sock]
    # every frame either socket sent came back on the shared ring, read by the first
    assert sum(p["comp"] for p in ports.values()) == sum(p["tx"] + p["twin"]["tx"] for p in ports.values())
    # the stats lines count the twin's packets with its queue's
    last = [e for e in events(out) if e["event"] == "exit"][-1]
    assert sum(last["tx"]) == sum(p["tx"] + p["twin"]["tx"] for p in ports.values())

    # Its markers carry its queue's name, written by a thread of their own.
    saved = tmp_path / "trace.txt"
    saved.write_text((instance / "trace").read_text())
    writers = {
        line.split("tracing_mark_write: ", 1)[0].split()[0]
        for line in saved.read_text().splitlines()
        if "tracing_mark_write: inner q:0 RX -> TX" in line
    }
    assert len(writers) == 2, writers
    result = analyze(saved, code=0)
    assert result["verdict"] == "clean", result["anomalies"][:2]
