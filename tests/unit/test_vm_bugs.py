"""`flightrec vm bugs`: the catalogue of real kernel bugs, as text and JSON,
each recipe one that vm record and the guest's record accept as written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flightrec.cli.main import cli as main
from flightrec.cli.record import options_from_params, parse_record_args
from flightrec.cli.vm import vm_record_cmd
from flightrec.record.forwarder import forwarder_missing
from flightrec.vm import build
from flightrec.vm.bugs import BUGS, find
from flightrec.vm.kernel import SERIES

KEYS = {"name", "fix_commit", "bug_kernel", "fixed_kernel", "record_args", "verdict", "kind"}


def test_json_lists_every_bug_with_the_documented_keys():
    out = CliRunner().invoke(main, ["vm", "bugs", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert [d["name"] for d in doc] == [b.name for b in BUGS] and len({b.name for b in BUGS}) == len(BUGS)
    for d in doc:
        assert KEYS <= set(d) and isinstance(d["record_args"], list)
        assert d["verdict"] == "kernel" and len(d["fix_commit"]) >= 12


def test_text_names_both_kernels_of_each_bug():
    out = CliRunner().invoke(main, ["vm", "bugs"])
    assert out.exit_code == 0
    for b in BUGS:
        assert f"--kernel {b.bug_kernel} " in out.output and f"--kernel {b.fixed_kernel} " in out.output


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_each_recipe_is_accepted_as_written(bug):
    # a kernel the project builds, or a stock Debian series
    assert {bug.bug_kernel, bug.fixed_kernel} <= set(build.NAMES) | set(SERIES)
    if forwarder_missing() and any("{forwarder}" in a for a in bug.record_args):
        pytest.skip(forwarder_missing())
    ctx = vm_record_cmd.make_context("record", ["--kernel", bug.bug_kernel, *bug.record_args])
    # What vm record does not take itself goes to record in the guest, which must accept it.
    parsed = parse_record_args(list(ctx.args))
    options_from_params(parsed.params).check()
    assert find(bug.name) is bug


@pytest.mark.parametrize("bug", [b for b in BUGS if b.bug_kernel in build.NAMES], ids=lambda b: b.name)
def test_a_built_pair_is_one_source_apart_by_its_patches_only(bug):
    bug_recipe, fixed_recipe = build.KERNELS[bug.bug_kernel], build.KERNELS[bug.fixed_kernel]
    assert bug_recipe.source == fixed_recipe.source
    assert bug_recipe.patches != fixed_recipe.patches
