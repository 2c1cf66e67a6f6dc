"""The example CI workflow's matrix: every cell is a `vm record` flightrec accepts."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from flightrec.cli.main import cli
from flightrec.vm.kernel import SERIES

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "flightrec-vm.yml"


def cells() -> list[dict]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["vm-record"]
    return job["strategy"]["matrix"]["include"]


def test_the_matrix_spans_every_series_and_zero_copy():
    got = {(c["kernel"], c["nic"], c["mode"]) for c in cells()}
    assert {k for k, _, _ in got} == set(SERIES)
    assert ("7.3", "virtio", "zerocopy") in got
    assert not any(nic == "veth" and mode == "zerocopy" for _, nic, mode in got), "veth has no zero-copy"


def test_every_cell_parses_as_a_vm_record():
    vm = cli.get_command(click.Context(cli), "vm")
    record = vm.get_command(click.Context(vm), "record")
    for c in cells():
        args = ["--kernel", c["kernel"], "--nic", c["nic"], "--mode", c["mode"], "--duration", "30", "-o", "x"]
        ctx = record.make_context("record", args)
        assert (ctx.params["nic"], ctx.params["mode"]) == (c["nic"], c["mode"])
