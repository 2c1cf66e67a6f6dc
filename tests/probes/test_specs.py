"""The probe specs: the shipped file, and what a malformed one gets."""

import re
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.probes.specs import SPECS_DIR, load_specs

MARKERS = Path(__file__).resolve().parents[2] / "docs" / "markers.md"


def test_shipped_specs_name_the_events_the_analyzer_reads():
    every = load_specs()
    specs = {s.name: s for s in every if not s.or_else}
    assert set(specs) == {"rx_reserve", "flush", "tx_get_data", "tx_xmit", "skb_destruct", "cq_reserve", "cq_submit"}
    table = MARKERS.read_text().split("Kernel events beside the markers")[1]
    for name, spec in specs.items():
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        # The fields the analyzer needs are fetched, with perf's default names or their own;
        # a probe's other forms (other kernels) may add fields, listed after.
        wanted = re.findall(r"`([a-z ]+)`", row.split("|")[3])[0].split()
        names = [f.arg_name(a) for f in every if f.name == name for a in f.args if a not in f.optional]
        assert wanted == list(dict.fromkeys(names))
    rx = specs["rx_reserve"]
    assert (rx.function, rx.at_call) == ("__xsk_rcv_zc", "xskq_prod_reserve_desc")
    assert [rx.arg_name(a) for a in rx.args] == ["addr", "len", "xs", "fq", "dev"]
    assert specs["flush"].function == "xsk_flush" and specs["tx_get_data"].function == "xp_raw_get_data"


@pytest.mark.parametrize(
    "text, message",
    [
        ("not toml [", "not valid TOML"),
        ("x = 1", "no [[probe]]"),
        ('[[probe]]\nname = "a b"\nfunction = "f"', "'name' must be a C identifier"),
        ('[[probe]]\nname = "a"\nfunction = "f"\nargs = ["x y"]', "argument 'x y'"),
        ('[[probe]]\nname = "a"\nfunction = "f"\nargs = ["x"]\noptional = ["y"]', "'optional'"),
        ('[[probe]]\nname = "a"\nfunction = "f"\nargs = ["p->x", "q->x"]', "same field name"),
        ('[[probe]]\nname = "a"\nfunction = "f"\n[[probe]]\nname = "a"\nfunction = "g"', "used twice"),
        ('[[probe]]\nname = "a"\nfunction = "f"\n[[probe]]\nname = "b"\nor_else = true\nfunction = "g"', "used twice"),
        ('[[probe]]\nname = "a"\nfunction = "f"\nargs = ["x=p->x", "x"]', "same field name"),
    ],
)
def test_malformed_specs_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FlightrecError, match=re.escape(message)):
        load_specs([path])


def test_missing_spec_file_is_an_error(tmp_path):
    with pytest.raises(FlightrecError, match="No such file"):
        load_specs([tmp_path / "nope.toml"])
    assert SPECS_DIR.is_dir()


def test_a_named_argument_and_another_form_of_a_probe(tmp_path):
    path = tmp_path / "forms.toml"
    path.write_text(
        '[[probe]]\nname = "a"\nfunction = "f"\nargs = ["slot=xs->cq->cached_prod"]\n'
        '[[probe]]\nname = "a"\nor_else = true\nfunction = "g"\nargs = ["slot=q->cached_prod"]\n'
    )
    first, other = load_specs([path])
    assert first.arg_name(first.args[0]) == "slot" and not first.or_else
    assert other.or_else and other.function == "g"
