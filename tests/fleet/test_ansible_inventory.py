"""``tether hosts import``: an Ansible inventory (INI and YAML) named in one command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.ansible_inventory import expand, read
from tether.inventory import Host, InventoryError

from .farm import tether

INI = """\
# a lab
bastion ansible_host=192.0.2.1

[web]
web[01:03].lab ansible_host=10.0.0.1
db-[a:b] tether_port=7800

[web:vars]
ansible_user=deploy

[tethered]
t1 ansible_host=10.0.0.9 ansible_port=7801 ansible_connection=tether.remote.tether
legacy:2222

[eu:children]
web
"""

YAML = """\
all:
  vars:
    tether_port: 7900
  hosts:
    solo:
      ansible_host: 192.0.2.7
  children:
    build:
      hosts:
        b1:
          ansible_host: 10.1.0.1
        b2:
          tether_port: 7901
      children:
        gpu:
          hosts:
            g1:
              ansible_host: 10.1.0.9
"""


def _by_name(hosts: list[Host]) -> dict[str, Host]:
    return {h.name: h for h in hosts}


def test_ini_hosts_groups_children_ports_and_ranges(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text(INI)
    imported = read(path, 7722)
    hosts = _by_name(imported.hosts)
    assert set(hosts) == {"bastion", "web01.lab", "web02.lab", "web03.lab", "db-a", "db-b",
                          "t1", "legacy"}
    assert hosts["bastion"] == Host("bastion", "192.0.2.1", 7722, ())
    assert hosts["web02.lab"] == Host("web02.lab", "10.0.0.1", 7722, ("eu", "web"))
    assert hosts["db-b"].port == 7800
    # ansible_port is tether's port only where the connection is tether's plugin
    assert hosts["t1"] == Host("t1", "10.0.0.9", 7801, ("tethered",))
    assert hosts["legacy"].port == 7722 and hosts["legacy"].address == "legacy"
    assert imported.ssh_ports_ignored == 1


def test_yaml_inheritance_and_nested_children(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yml"
    path.write_text(YAML)
    hosts = _by_name(read(path, 7722).hosts)
    assert hosts["solo"] == Host("solo", "192.0.2.7", 7900, ())
    assert hosts["b1"] == Host("b1", "10.1.0.1", 7900, ("build",))
    assert hosts["b2"] == Host("b2", "b2", 7901, ("build",))
    assert hosts["g1"] == Host("g1", "10.1.0.9", 7900, ("build", "gpu"))


def test_patterns_expand_like_ansible() -> None:
    assert expand("n[08:10]", "x") == ["n08", "n09", "n10"]
    assert expand("n[1:9:4]", "x") == ["n1", "n5", "n9"]
    assert expand("r[a:c]-[1:2]", "x") == ["ra-1", "ra-2", "rb-1", "rb-2", "rc-1", "rc-2"]
    with pytest.raises(InventoryError, match="expands to"):
        expand("n[0:99999999]", "x")
    with pytest.raises(InventoryError, match="a range is"):
        expand("n[a:9]", "x")


@pytest.mark.parametrize("text, message", [
    ("[web\nh1\n", "line 1: a section header must end with ']'"),
    ("[web:nonsense]\n", "unknown section kind"),
    ("[web:vars]\njustaword\n", "line 2: expected KEY=VALUE"),
    ("[w]\nbad/name\n", "host 'bad/name'"),
    ("[w]\nh1 ansible_host='a b'\n", "is not a host name or address"),
    ("[w]\nh1 tether_port=99999\n", "not a TCP port"),
])
def test_bad_ini_names_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message):
        read(path, 7722)


def test_import_cli_writes_the_inventory_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = tmp_path / "hosts.ini"
    source.write_text(INI)
    assert tether("hosts", "add", "keep", "10.9.9.9", home=home).returncode == 0

    dry = tether("hosts", "import", str(source), "-n", home=home)
    assert dry.returncode == 0, dry.stderr
    assert "would import 8 hosts (8 new or changed)" in dry.stderr
    assert "web01.lab\t10.0.0.1\t7722\teu,web" in dry.stdout
    listed = json.loads(tether("hosts", "--json", home=home).stdout)
    assert [h["name"] for h in listed] == ["keep"]  # the dry run wrote nothing

    done = tether("hosts", "import", str(source), "--group", "lab", home=home)
    assert done.returncode == 0, done.stderr
    assert "imported 8 hosts (8 new or changed)" in done.stdout
    assert "ansible_port of 1 host(s) taken as ssh's port" in done.stderr
    listed = json.loads(tether("hosts", "--json", home=home).stdout)
    by_name = {h["name"]: h for h in listed}
    assert set(by_name) == {"keep", "bastion", "web01.lab", "web02.lab", "web03.lab", "db-a",
                            "db-b", "t1", "legacy"}
    assert by_name["t1"]["port"] == 7801 and by_name["t1"]["groups"] == ["tethered", "lab"]

    again = tether("hosts", "import", str(source), "--group", "lab", home=home)
    assert "(0 new or changed)" in again.stdout


def test_import_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = tether("hosts", "import", str(tmp_path / "absent.ini"), home=tmp_path / "h")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "absent.ini" in missing.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("all: [1, 2\n")
    broken = tether("hosts", "import", str(bad), home=tmp_path / "h")
    assert broken.returncode == 1
    assert broken.stderr.startswith("tether: ") and "not valid YAML" in broken.stderr
    assert "Traceback" not in broken.stderr
