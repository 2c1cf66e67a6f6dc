"""The race-window widener's host half: specs, sites from DWARF, the loader's options and verifier.

Loading it for real needs kprobes, so that part runs in the VM
(tests/vm/test_veth_race.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.probes.widen import (
    LOADER,
    SPEC_PATH,
    WidenOptions,
    WidenPlan,
    load_widen_specs,
    loader_argv,
    main,
    resolve_widen,
)

from probekit import cached_kernel, kernel_source


def test_spec_names_both_sites_by_source_not_offsets():
    specs = load_widen_specs()
    assert specs["flush"].at == "entry" and specs["flush"].inlined[-1] == "xsk_flush"
    assert specs["reserve"].after == "q->cached_prod++"
    assert "+" not in SPEC_PATH.read_text().split("[[site]]", 1)[1].replace("++", "")


@pytest.mark.parametrize(
    "body, why",
    [
        ('[[site]]\nname="flush"\nfunction="f"\ninlined=["g"]\nkey=["q"]\n', "either at"),
        ('[[site]]\nname="flush"\nfunction="f"\ninlined=["g"]\nat="entry"\nkey=[]\n', "'key'"),
        ('[[site]]\nname="flush"\nfunction="f"\ninlined=["g"]\nat="entry"\nkey=["q"]\n', "no site named reserve"),
        ("[[site]\n", "not valid TOML"),
    ],
)
def test_bad_spec_is_one_clear_error(tmp_path, body, why):
    path = tmp_path / "w.toml"
    path.write_text(body)
    with pytest.raises(FlightrecError, match=why):
        load_widen_specs(path)


@pytest.mark.parametrize(
    "opts, why",
    [
        (WidenOptions(flush_ms=0), "flush delay"),
        (WidenOptions(reserve_ms=5000), "reserve delay"),
        (WidenOptions(flush_every=0), "rate"),
        (WidenOptions(queue=-1), "queue"),
    ],
)
def test_bad_options_are_refused(opts, why):
    with pytest.raises(FlightrecError, match=why):
        opts.check()


@pytest.fixture(scope="module")
def debian_source() -> Path:
    """net/xdp/ of linux-source-6.1 at the debug kernel's own version (fetched with it)."""
    return kernel_source(cached_kernel("6.1"))


@pytest.fixture(scope="module")
def debian_plan(debian_source) -> WidenPlan:
    """Debian 12's stock 6.1 kernel (has the fix; sites are the same code)."""
    return resolve_widen(cached_kernel("6.1"), source_dir=debian_source)


def test_sites_resolve_in_debian_61(debian_plan, debian_source):
    queue_h = (debian_source / "net" / "xdp" / "xsk_queue.h").read_text().splitlines()
    xsk_c = (debian_source / "net" / "xdp" / "xsk.c").read_text().splitlines()
    flush, reserve = debian_plan.flush, debian_plan.reserve
    assert flush.symbol == "__xsk_map_flush" and reserve.symbol == "__xsk_rcv_zc"
    assert flush.file == "net/xdp/xsk.c" and xsk_c[flush.line - 1].startswith("static void xsk_flush(")
    assert "ring->desc[idx].addr = addr;" in queue_h[reserve.line - 1]
    assert "q->cached_prod++" in queue_h[reserve.line - 2]
    # The RX queue both programs compare: xs->rx at the flush, q (in a register) at the reserve.
    assert flush.key.expr == "xs->rx" and re.fullmatch(r"\+\d+\(%\w+\):x64", flush.key.fetch)
    assert reserve.key.expr == "q" and reserve.key.fetch.startswith("%")
    assert flush.queue is not None and flush.queue.expr == "xs->queue_id"
    assert debian_plan.build_id and len(debian_plan.build_id) == 40


def test_plan_survives_json(debian_plan):
    again = WidenPlan.from_dict(json.loads(json.dumps(debian_plan.as_dict())))
    assert again == debian_plan
    with pytest.raises(FlightrecError, match="not a widener plan"):
        WidenPlan.from_dict({"flush": {}})


def test_loader_argv_and_queue_needs_queue_site(debian_plan):
    argv = loader_argv(debian_plan, WidenOptions(flush_ms=5, flush_every=10, reserve_ms=20, queue=1))
    assert argv[argv.index("--flush") + 1] == debian_plan.flush.location
    assert argv[argv.index("--flush-ns") + 1] == "5000000"
    assert argv[argv.index("--queue") + 1] == "1"
    no_queue = replace(debian_plan, flush=replace(debian_plan.flush, queue=None))
    with pytest.raises(FlightrecError, match="queue id is not readable"):
        loader_argv(no_queue, WidenOptions(queue=1))


def _loader() -> Path:
    if not LOADER.is_file():
        pytest.skip("c/widen not built (make build)")
    return LOADER


def test_loader_programs_pass_this_kernels_verifier(debian_plan):
    proc = subprocess.run(
        loader_argv(debian_plan, WidenOptions(queue=0)) + ["--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events] == ["ready", "exit"]
    assert events[0]["attached"] is False and events[1]["reserve_delays"] == 0


@pytest.mark.parametrize(
    "args, why",
    [
        (["--flush-key", "%zz:x64"], "not a fetch argument"),
        (["--flush", "nosymbol"], "SYMBOL+OFFSET"),
        (["--flush-ns", "2000000000"], "at most"),
        (["--queue", "1"], "--queue needs --flush-queue"),
    ],
)
def test_loader_bad_options_one_line_exit_2(args, why):
    given = {
        "--flush": "__xsk_map_flush+57",
        "--flush-key": "%ax:x64",
        "--reserve": "__xsk_rcv_zc+119",
        "--reserve-key": "%dx:x64",
        **dict(zip(args[::2], args[1::2])),
    }
    argv = [str(_loader())] + [word for pair in given.items() for word in pair]
    proc = subprocess.run(argv + ["--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_run_refuses_a_plan_for_another_kernel(debian_plan, tmp_path, capsys):
    plan = tmp_path / "widen.json"
    plan.write_text(json.dumps({"plan": debian_plan.as_dict(), "options": {}}))
    code = main(["run", "--plan", str(plan), "--", sys.executable, "-c", "pass"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("flightrec: ") and "build ID" in err, err
    assert len(err.strip().splitlines()) == 1
