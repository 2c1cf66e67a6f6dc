"""`flightrec report` and `flightrec export perfetto` as a user runs them, and the
page as a browser (Debian's headless Chromium) shows it."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def run(*args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "flightrec", *args], input=stdin, capture_output=True, timeout=timeout)


class Page(HTMLParser):
    """The few parts of the page the tests read: elements by id and class,
    their attributes and text."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self._open:
            self._open[-1]["children"].append(el)
        self.elements.append(el)
        if tag not in ("meta", "br", "img", "link", "input"):
            self._open.append(el)

    def handle_endtag(self, tag):
        while self._open:
            el = self._open.pop()
            if el["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self._open:
            el["text"] += data

    def by_id(self, ident: str) -> dict:
        (el,) = [e for e in self.elements if e["attrs"].get("id") == ident]
        return el

    def by_class(self, cls: str, tag: str = None) -> list[dict]:
        return [
            e
            for e in self.elements
            if cls in (e["attrs"].get("class") or "").split() and (tag is None or e["tag"] == tag)
        ]


def descendants(el: dict, tag: str) -> list[dict]:
    out = []
    for c in el["children"]:
        if c["tag"] == tag:
            out.append(c)
        out += descendants(c, tag)
    return out


def test_seed_poison_page(fixtures, tmp_path):
    out = tmp_path / "report.html"
    p = run("report", str(fixtures / "seed-poison.txt"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stderr.decode().strip() == f"{out}: KERNEL — 1 anomaly, first: publish_race at line 6"
    page = Page(out.read_text())
    verdict = page.by_id("verdict")
    assert verdict["attrs"]["data-verdict"] == "kernel" and verdict["text"].startswith("KERNEL")
    (anomaly,) = page.by_class("anomaly", "section")
    assert anomaly["attrs"]["data-kind"] == "publish_race" and anomaly["attrs"]["data-line"] == "6"
    # the evidence lines, in the order the check gave them
    (evidence,) = page.by_class("evidence", "table")
    assert [r["attrs"]["data-line"] for r in descendants(evidence, "tr")[1:]] == ["6", "2", "3", "5"]
    # the post's figure: CPU 2 and CPU 0 side by side, rows in time order, evidence highlighted
    (fig,) = page.by_class("cpu-timeline", "table")
    assert fig["attrs"]["data-cpus"] == "2,0"
    assert [th["text"] for th in descendants(fig, "th")] == ["line", "+µs", "CPU 2", "CPU 0"]
    rows = descendants(fig, "tr")[1:]
    assert [int(r["attrs"]["data-line"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    cells = {
        int(r["attrs"]["data-line"]): [c for c in descendants(r, "td") if "cpu" in c["attrs"].get("class", "")]
        for r in rows
    }
    assert "reserve 0x1000900" in cells[2][0]["text"] and not cells[2][1]["text"]  # CPU 2's column
    assert "xsk_flush" in cells[3][1]["text"] and not cells[3][0]["text"]  # CPU 0's column
    assert "0xdeadbeefdeadbeef" in cells[6][1]["text"]
    highlighted = {int(r["attrs"]["data-line"]) for r in rows if r["attrs"].get("class") == "evidence"}
    assert highlighted == {2, 3, 5, 6}
    # the life of the descriptor the slot was reserved for, with the flush that published it
    (life,) = page.by_class("life", "table")
    assert life["attrs"]["data-addr"] == "0x1000900"
    assert [r["attrs"]["data-line"] for r in descendants(life, "tr")[1:]] == ["2", "3"]
    stats = page.by_id("stats")
    assert "6 (ftrace)" in stats["text"] and "2 reserve, 2 flush" in stats["text"]
    assert [r["attrs"]["data-cpu"] for r in descendants(page.by_class("per-cpu", "table")[0], "tr")[1:]] == ["0", "2"]


def test_overrun_page_shows_each_cpus_history_and_the_claims(fixtures, tmp_path):
    """Where each CPU's history begins, and which CPU's history each step of the verdict leaned on."""
    out = tmp_path / "report.html"
    p = run("report", str(fixtures / "seed-poison-overrun.txt"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    page = Page(out.read_text())
    assert page.by_id("verdict")["attrs"]["data-verdict"] == "kernel"
    (history,) = page.by_class("history", "table")
    rows = {r["attrs"]["data-cpu"]: r["attrs"]["data-from"] for r in descendants(history, "tr")[1:]}
    assert rows == {"0": "609766.698512", "2": "609766.698523"}
    assert "CPUs 1, 3: no event" in page.by_id("stats")["text"]
    (claims,) = page.by_class("claims", "table")
    rows = descendants(claims, "tr")[1:]
    assert rows and all(r["attrs"]["data-holds"] == "true" for r in rows)
    leaning_on_2 = [r for r in rows if r["attrs"]["data-cpus"] == "2" and r["attrs"]["data-absence"] == "true"]
    assert leaning_on_2 and "609766.698523" in leaning_on_2[0]["text"]
    # a whole trace says so
    whole = tmp_path / "whole.html"
    assert run("report", str(fixtures / "seed-poison.txt"), "-o", str(whole)).returncode == 0
    wpage = Page(whole.read_text())
    assert {r["attrs"]["data-from"] for r in descendants(wpage.by_class("history", "table")[0], "tr")[1:]} == {""}
    assert "no buffer overran" in wpage.by_id("stats")["text"]


def test_page_is_self_contained(fixtures, tmp_path):
    out = tmp_path / "report.html"
    assert run("report", str(fixtures / "seed-fill-order.txt"), "-o", str(out)).returncode == 0
    text = out.read_text()
    page = Page(text)
    assert not page.tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert "http://" not in text and "https://" not in text and "url(" not in text
    csp = [e for e in page.elements if e["tag"] == "meta" and e["attrs"].get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["attrs"]["content"]
    assert page.by_id("verdict")["attrs"]["data-verdict"] == "kernel"
    (fig,) = page.by_class("cpu-timeline", "table")
    assert fig["attrs"]["data-cpus"] == "2,1"


def test_clean_trace_and_stdin(tmp_path):
    clean = b"  fwd-1 [000] ..... 1.000000: tracing_mark_write: outer q:0 0x1000 FREE -> FILL\n"
    p = run("report", "-", "-o", "-", stdin=clean)
    assert p.returncode == 0
    page = Page(p.stdout.decode())
    assert page.by_id("verdict")["attrs"]["data-verdict"] == "clean"
    assert not page.by_class("anomaly", "section")
    assert "CLEAN — no anomaly" in p.stderr.decode()


BAD = {
    "missing": None,
    "empty": b"",
    "prose": b"Dear reader,\nthis is not a trace.\n",
    "binary": bytes(range(256)) * 16,
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("command", [["report"], ["export", "perfetto"]])
def test_bad_input_one_line_exit_2(command, name, tmp_path):
    trace = tmp_path / name
    if BAD[name] is not None:
        trace.write_bytes(BAD[name])
    out = tmp_path / "out"
    p = run(*command, str(trace), "-o", str(out))
    assert p.returncode == 2
    err = p.stderr.decode()
    assert err.startswith("flightrec: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("command", [["report"], ["export", "perfetto"]])
def test_unwritable_output_one_line_exit_2(command, fixtures, tmp_path):
    p = run(*command, str(fixtures / "seed-poison.txt"), "-o", str(tmp_path / "no" / "such" / "dir.out"))
    assert p.returncode == 2
    assert p.stderr.decode().count("\n") == 1 and "does not exist" in p.stderr.decode()


def test_export_perfetto_cli(fixtures, tmp_path):
    out = tmp_path / "seed.perfetto.json"
    p = run("export", "perfetto", str(fixtures / "seed-fill-order.txt"), "-o", str(out))
    assert p.returncode == 0  # written, though the trace holds an anomaly
    assert "verdict KERNEL (1 anomaly)" in p.stderr.decode()
    doc = json.loads(out.read_text())
    assert {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"} >= {"CPU 1", "CPU 2"}
    assert doc["otherData"]["verdict"] == "kernel"


@pytest.mark.parametrize(
    "name,args,json_out",
    [
        ("seed.pftrace", [], False),
        ("seed.json", [], True),
        ("seed.pftrace", ["--format", "json"], True),
        ("seed.json", ["--format", "proto"], False),
    ],
)
def test_export_perfetto_format_follows_the_name_unless_given(fixtures, tmp_path, name, args, json_out):
    out = tmp_path / name
    p = run("export", "perfetto", *args, str(fixtures / "seed-fill-order.txt"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    if json_out:
        assert json.loads(data)["otherData"]["verdict"] == "kernel"
    else:
        # a Trace message: packet after packet (field 1), never JSON
        assert data[:1] == b"\x0a" and b"verdict: kernel" in data
        with pytest.raises(ValueError):
            json.loads(data)


@pytest.mark.parametrize("command", [["report"], ["export"], ["export", "perfetto"]])
def test_help_ends_with_examples(command):
    p = run(*command, "--help")
    assert p.returncode == 0
    text = p.stdout.decode()
    assert "Examples:" in text
    examples = text[text.index("Examples:") :]
    assert "flightrec " in examples


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def png_raw(data: bytes) -> bytes:
    """The decompressed scanlines (filtered, but a blank page stays near-uniform)."""
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    return zlib.decompress(idat)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_reads_the_verdict_and_renders(fixtures, tmp_path, artifacts_dir):
    report = tmp_path / "report.html"
    assert run("report", str(fixtures / "seed-poison.txt"), "-o", str(report)).returncode == 0
    profile = tmp_path / "chromium-profile"
    base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    env = {**os.environ, "HOME": str(tmp_path)}  # chromium writes under $HOME even with a profile dir
    dom = subprocess.run([*base, "--dump-dom", report.as_uri()], capture_output=True, timeout=180, env=env)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    page = Page(dom.stdout.decode())
    verdict = page.by_id("verdict")
    assert verdict["attrs"]["data-verdict"] == "kernel" and verdict["text"].startswith("KERNEL")
    (fig,) = page.by_class("cpu-timeline", "table")
    assert [th["text"] for th in descendants(fig, "th")][2:] == ["CPU 2", "CPU 0"]

    png = artifacts_dir / "report-seed-poison.png"
    shot = subprocess.run(
        [*base, f"--screenshot={png}", "--window-size=1400,1000", report.as_uri()],
        capture_output=True,
        timeout=180,
        env=env,
    )
    assert shot.returncode == 0 and png.exists(), shot.stderr.decode()[-2000:]
    data = png.read_bytes()
    assert png_size(data) == (1400, 1000)
    raw = png_raw(data)
    # a blank or error page is a few distinct byte values; text, tables and the red verdict are many
    assert len(data) > 20_000 and len(set(raw)) > 100
