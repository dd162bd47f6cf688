"""The inventory file and target resolution (no servers), and ``tether hosts``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.errors import BadRequest
from tether.inventory import (
    Host,
    Inventory,
    InventoryError,
    Target,
    dump,
    is_multi,
    load,
    names_inventory_host,
    parse,
    resolve,
    save,
)

from .farm import tether


def _inventory() -> Inventory:
    inv = Inventory()
    inv.add(Host("web1", "10.0.0.1", 7722, ("web", "eu")))
    inv.add(Host("web2", "10.0.0.2", 7800, ("web",), timeout=5.0, keepalive=2.5))
    inv.add(Host("db", "db.example.com", groups=("eu",)))
    return inv


def test_resolve_every_kind_of_target() -> None:
    inv = _inventory()
    assert resolve("web1", inv) == [Target("web1", "10.0.0.1", 7722)]
    assert resolve("10.9.9.9", inv, 9000) == [Target("10.9.9.9", "10.9.9.9", 9000)]
    assert resolve("[::1]", inv) == [Target("[::1]", "::1", 7722)]
    assert [t.name for t in resolve("@web", inv)] == ["web1", "web2"]
    assert [t.name for t in resolve("@all", inv)] == ["web1", "web2", "db"]
    assert [t.name for t in resolve("@eu,web2,web1,x", inv)] == ["web1", "db", "web2", "x"]
    assert resolve("web2", inv)[0].timeout == 5.0
    assert resolve("web2", inv)[0].keepalive == 2.5 and resolve("web1", inv)[0].keepalive is None
    assert resolve("web2", inv, 1)[0].port == 7800  # the inventory's port wins
    assert resolve(["web1", Target("t", "1.2.3.4", 1)], inv)[1] == Target("t", "1.2.3.4", 1)


@pytest.mark.parametrize("spec", ["@nosuch", ",", ""])
def test_resolve_refuses_targets_that_reach_nobody(spec: str) -> None:
    with pytest.raises(BadRequest):
        resolve(spec, _inventory())


def test_fleet_syntax_and_names(tmp_path: Path) -> None:
    assert is_multi("@web") and is_multi("a,b") and not is_multi("host")
    assert not names_inventory_host("web1", tmp_path)  # no file: nothing read
    save(_inventory(), tmp_path)
    assert names_inventory_host("web1", tmp_path)
    assert not names_inventory_host("10.0.0.1", tmp_path)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    inv = _inventory()
    path = save(inv, tmp_path)
    assert path == tmp_path / "hosts.toml"
    assert load(tmp_path) == inv
    assert load(tmp_path / "missing") == Inventory()


@given(address=st.text(min_size=1, max_size=40), groups=st.lists(
    st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True), max_size=3, unique=True))
def test_any_address_survives_the_writer(address: str, groups: list[str]) -> None:
    inv = Inventory()
    inv.add(Host("h.1", address, 1, tuple(g for g in groups if g != "all"), 2.5))
    assert parse(dump(inv)) == inv


@pytest.mark.parametrize("text, message", [
    ("[hosts.a]\nport = 1\n", "'address'"),
    ("[hosts.a]\naddress = 'x'\nport = 70000\n", "not a TCP port"),
    ("[hosts.a]\naddress = 'x'\ncolour = 'red'\n", "unknown key 'colour'"),
    ("[hosts.a]\naddress = 'x'\ngroups = 'web'\n", "'groups'"),
    ("[hosts.a]\naddress = 'x'\ntimeout = -1\n", "'timeout'"),
    ("[hosts.a]\naddress = 'x'\nkeepalive = 0\n", "'keepalive'"),
    ("[hosts.a]\naddress = 'x'\nkeepalive = true\n", "'keepalive'"),
    ('[hosts."../x"]\naddress = "x"\n', "not allowed"),
    ("[hosts.a]\naddress = 'x'\ngroups = ['all']\n", "'all'"),
    ("hosts = 3\n", "table"),
    ("[hosts.a\n", "hosts.toml"),
])
def test_damaged_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message) as info:
        parse(text)
    assert "hosts.toml" in str(info.value)


def test_hosts_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    empty = tether("hosts", home=home)
    assert empty.returncode == 0 and "no hosts" in empty.stderr
    added = tether("hosts", "add", "web1", "10.0.0.1", "-g", "web", "-g", "eu", "--timeout",
                   "7", "--keepalive", "4", home=home)
    assert added.returncode == 0 and added.stdout.startswith("added: web1"), added.stderr
    assert tether("hosts", "add", "web2", "10.0.0.2", "-p", "7800", "--mux", "auto",
                  home=home).returncode == 0
    again = tether("hosts", "add", "web2", "10.0.0.2", "-p", "7800", "--mux", "auto", home=home)
    assert again.stdout.startswith("unchanged")
    listed = tether("hosts", home=home)
    assert listed.stdout.splitlines() == ["web1\t10.0.0.1\t7722\tweb,eu\t7",
                                          "web2\t10.0.0.2\t7800\t\t"]
    as_json = json.loads(tether("hosts", "--json", home=home).stdout)
    assert as_json[0] == {"name": "web1", "address": "10.0.0.1", "port": 7722,
                          "groups": ["web", "eu"], "timeout": 7.0, "keepalive": 4.0,
                          "mux": None}
    assert as_json[1]["mux"] == "auto"
    assert load(home).hosts["web2"].mux == "auto"
    bad = tether("hosts", "add", "../evil", "1.2.3.4", home=home)
    assert bad.returncode == 1 and "not allowed" in bad.stderr
    removed = tether("hosts", "remove", "web1", home=home)
    assert removed.returncode == 0
    assert list(load(home).hosts) == ["web2"]
    missing = tether("hosts", "remove", "web1", home=home)
    assert missing.returncode == 1 and "no host named 'web1'" in missing.stderr
