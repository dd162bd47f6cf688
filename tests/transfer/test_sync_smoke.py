from __future__ import annotations

from pathlib import Path

import tether

from .helpers import make_file, snapshot


async def test_smoke(api: tether.Connection, work: Path, rig) -> None:
    src = work / "src"
    (src / "a" / "b").mkdir(parents=True)
    make_file(src / "a" / "x.bin", 1000)
    make_file(src / "a" / "b" / "big.bin", 3_000_000, seed=2)
    (src / "l").symlink_to("a/x.bin")
    result = await api.sync(str(src) + "/", "dest")
    print(result)
    assert snapshot(src) == snapshot(rig.root / "dest")
    again = await api.sync(str(src) + "/", "dest")
    print(again)
    make_file(src / "a" / "b" / "big.bin", 3_000_000, seed=3)
    third = await api.sync(str(src) + "/", "dest")
    print(third)
    assert snapshot(src) == snapshot(rig.root / "dest")
    back = work / "back"
    pulled = await api.sync("dest/", str(back), pull=True)
    print(pulled)
    assert snapshot(src) == snapshot(back)
