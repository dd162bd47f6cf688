"""``user@host`` and ``user =`` in the inventory: parsing, writing, resolving (no server)."""

from __future__ import annotations

import pytest

from tether.errors import BadRequest
from tether.inventory import Host, InventoryError, dump, parse, resolve, split_user

TEXT = """
[hosts.web1]
address = "10.0.0.5"
groups = ["web"]
user = "deploy"

[hosts.web2]
address = "10.0.0.6"
groups = ["web"]
"""


def test_user_is_read_and_written_back() -> None:
    inventory = parse(TEXT)
    assert inventory.hosts["web1"].user == "deploy"
    assert inventory.hosts["web2"].user == ""
    again = parse(dump(inventory))
    assert again.hosts == inventory.hosts
    assert 'user = "deploy"' in dump(inventory)
    assert "user" not in dump(parse(TEXT.replace('user = "deploy"\n', "")))


def test_targets_carry_the_account() -> None:
    inventory = parse(TEXT)
    by_name = {t.name: t.user for t in resolve("web1,web2,build@web2,x@10.1.1.1", inventory)}
    assert by_name == {"web1": "deploy", "web2": "", "build@web2": "build", "x@10.1.1.1": "x"}
    group = resolve("build@@web", inventory)
    assert [(t.address, t.user) for t in group] == [("10.0.0.5", "build"), ("10.0.0.6", "build")]


@pytest.mark.parametrize("spec", ["bad name@web1", "-x@web1"])
def test_a_bad_account_name_is_refused(spec: str) -> None:
    with pytest.raises(BadRequest, match="not a Unix account name"):
        resolve(spec, parse(TEXT))


def test_a_bad_user_in_the_file_is_an_inventory_error() -> None:
    with pytest.raises(InventoryError, match="'user' must be a Unix account name"):
        parse(TEXT.replace('"deploy"', '"de ploy"'))


def test_split_user() -> None:
    assert split_user("build@web1") == ("build", "web1")
    assert split_user("web1") == ("", "web1")
    assert split_user("@web") == ("", "@web")
    assert split_user("build@@web") == ("build", "@web")
    assert Host("h", "a", user="u").target().user == "u"
