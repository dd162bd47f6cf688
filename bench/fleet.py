"""Fleet benchmark: one command on 50 hosts, whole process, tether against OpenSSH and AsyncSSH.

``python -m bench.fleet [--hosts 50] [--rounds 5] [--json FILE]`` sets up, in one temporary
directory, N loopback hosts 127.0.0.2… and on each of them

- a tether server: all N in one helper process (``python -m bench.fleet _farm``), one asyncio
  loop, TLS with throwaway identities; the client's inventory names them, all in ``@all``;
- an OpenSSH server: ``sshd -D`` with ``ListenAddress`` lines for the N addresses (sshd listens
  on at most 16 sockets, so one sshd per 16 hosts, all sharing one port, host key, authorized
  key and client config; nothing in ~/.ssh or /etc is read or written);

then times, as whole processes started from here (wall clock, median of the rounds):

- ``tether run @all -- true``                      the target: <= 1 s for 50 hosts;
- a shell loop ``for h in …; do ssh h true; done``  one host after another, as a script does it;
- the same loop with ``&`` and ``wait``             every ssh at once;
- AsyncSSH ``gather`` of N (connect, run true)      ``python -m bench.fleet _asyncssh …``.

Self-contained on purpose (it imports nothing from the rest of ``bench``), so it runs on its own
while the main harness changes; only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SSHD = "/usr/sbin/sshd"
TARGET_SECONDS = 1.0
FIRST = 2  # 127.0.0.2 is the first host

SSHD_CONFIG = """\
{listen}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd{part}.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
MaxStartups 1024
MaxSessions 64
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel ERROR
"""

SSH_CONFIG = """\
Host 127.0.0.*
  Port {port}
  User {user}
  IdentityFile {dir}/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
"""


def addresses(n: int) -> list[str]:
    if not 1 <= n <= 250:
        raise SystemExit("--hosts must be 1..250 (127.0.0.2 to 127.0.0.251)")
    return [f"127.0.0.{i}" for i in range(FIRST, FIRST + n)]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: only for a process started here."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.fleet: {what} did not come up in {timeout:g} s")
        time.sleep(0.05)


def tether_bin() -> str:
    script = Path(sys.executable).with_name("tether")
    return str(script) if script.exists() else shutil.which("tether") or "tether"


# --- tether: the servers (helper process) and the client home -----------------------------------


async def _farm(base: Path, hosts: list[str], port: int, ready: Path) -> None:
    """``_farm``: N tether servers in this process until SIGTERM; ``ready`` written when up."""
    from tether.identity import load_identity
    from tether.server.listener import Server, ServerConfig

    identity = load_identity(base / "server", "server")
    servers = []
    for host in hosts:
        server = Server(ServerConfig(home=base / "server", host=host, port=port,
                                     root=base / "root", name=host), identity)
        await server.start()
        servers.append(server)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    ready.write_text("up\n")
    await stopped.wait()
    await asyncio.gather(*(s.close() for s in servers))


def setup_tether(tmp: Path, hosts: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Identities, inventory, pins; the farm process started. Returns it and the client home."""
    from tether.identity import (
        AuthorizedClient,
        add_authorized,
        add_known_host,
        generate_identity,
    )
    from tether.inventory import Host, Inventory, save

    server = generate_identity(tmp / "server", "bench-fleet-server", "server")
    client = generate_identity(tmp / "client", "bench-fleet-client")
    add_authorized(tmp / "server", AuthorizedClient(client.cert_der, client.name))
    (tmp / "root").mkdir()
    port = free_port(hosts[0])
    ready = tmp / "farm.ready"
    with open(tmp / "farm.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "_farm", str(tmp), str(port), *hosts],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=Path(__file__).resolve().parent.parent,
        )
    wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "the tether farm")
    if proc.poll() is not None:
        raise SystemExit(f"tether farm exited: {(tmp / 'farm.log').read_text()}")
    inventory = Inventory()
    for host in hosts:
        inventory.add(Host(f"h{host.rsplit('.', 1)[1]}", host, port, ("bench",)))
        add_known_host(tmp / "client", host, port, server.fingerprint)
    save(inventory, tmp / "client")
    return proc, tmp / "client"


# --- OpenSSH ------------------------------------------------------------------------------------


SSHD_MAX_LISTEN = 16  # sshd's MAX_LISTEN_SOCKS


def setup_sshd(tmp: Path, hosts: list[str]) -> tuple[list[subprocess.Popen[bytes]], Path, int]:
    """sshd listening on every host address (one per 16); returns them, the directory and the
    port."""
    d = tmp / "ssh"
    d.mkdir(mode=0o700)
    for key in ("host_ed25519", "client_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-fleet",
                        "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
    port = free_port(hosts[0])
    host_pub = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
    (d / "known_hosts").write_text("".join(f"[{h}]:{port} {host_pub}\n" for h in hosts))
    user = getpass.getuser()
    (d / "ssh_config").write_text(SSH_CONFIG.format(port=port, dir=d, user=user))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    procs = []
    for part, first in enumerate(range(0, len(hosts), SSHD_MAX_LISTEN)):
        listen = "\n".join(f"ListenAddress {h}:{port}"
                           for h in hosts[first:first + SSHD_MAX_LISTEN])
        config = d / f"sshd_config{part}"
        config.write_text(SSHD_CONFIG.format(listen=listen, dir=d, user=user, part=part))
        procs.append(subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(d / "log")],
                                      stdin=subprocess.DEVNULL))

    def up() -> bool:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"sshd exited: {(d / 'log').read_text(errors='replace')}")
        for host in hosts:
            with socket.socket() as sock:
                if sock.connect_ex((host, port)) != 0:
                    return False
        return True

    wait_for(up, 15, "sshd")
    return procs, d, port


async def _asyncssh(d: Path, port: int, hosts: list[str]) -> None:
    """``_asyncssh``: connect to every host at once, run ``true``, close (a whole process)."""
    import asyncssh

    async def one(host: str) -> None:
        async with asyncssh.connect(host, port, username=getpass.getuser(),
                                    client_keys=[str(d / "client_ed25519")],
                                    known_hosts=str(d / "known_hosts"), config=None,
                                    agent_path=None) as conn:
            await conn.run("true", check=True)

    await asyncio.gather(*(one(h) for h in hosts))


# --- timing -------------------------------------------------------------------------------------


def timed(argv: list[str], env: dict[str, str] | None = None, shell: bool = False) -> float:
    """Wall seconds of one whole process; a failure stops the benchmark."""
    t0 = time.perf_counter()
    done = subprocess.run(argv if not shell else argv[0], shell=shell, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"bench.fleet: {argv[0][:80]!r} failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    return wall


def contenders(client_home: Path, ssh_dir: Path | None, ssh_port: int, hosts: list[str]
               ) -> dict[str, Callable[[], float]]:
    env = {**os.environ, "TETHER_HOME": str(client_home)}
    env.pop("TETHER_DEBUG", None)
    out: dict[str, Callable[[], float]] = {
        "tether run @all -- true": lambda: timed([tether_bin(), "run", "@all", "--", "true"],
                                                 env),
    }
    if ssh_dir is not None:
        cfg = ssh_dir / "ssh_config"
        listing = " ".join(hosts)
        out["shell loop: ssh HOST true"] = lambda: timed(
            [f"for h in {listing}; do ssh -F {cfg} $h true || exit 1; done"], shell=True)
        out["shell loop: ssh HOST true &, wait"] = lambda: timed(
            [f"for h in {listing}; do ssh -F {cfg} $h true & done; wait"], shell=True)
        out["asyncssh gather (whole process)"] = lambda: timed(
            [sys.executable, "-m", "bench.fleet", "_asyncssh", str(ssh_dir), str(ssh_port),
             *hosts])
    return out


def measure(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Every contender once per round, alternating, after one warm-up each."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def report(samples: dict[str, list[float]], n: int) -> dict[str, object]:
    tether_median = statistics.median(samples["tether run @all -- true"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append({"contender": name, "median_s": round(median, 4),
                     "min_s": round(min(values), 4), "max_s": round(max(values), 4),
                     "vs_tether": round(median / tether_median, 2)})
    width = max(len(r["contender"]) for r in rows)  # type: ignore[arg-type]
    print(f"\n{n} hosts, one `true` each, whole process, wall time (median of "
          f"{len(next(iter(samples.values())))}):")
    for r in rows:
        print(f"  {str(r['contender']).ljust(width)}  {r['median_s']:8.3f} s  "
              f"(min {r['min_s']:.3f}, max {r['max_s']:.3f})  x{r['vs_tether']}")
    verdict = "met" if tether_median <= TARGET_SECONDS else "MISSED"
    print(f"  target: tether <= {TARGET_SECONDS:g} s wall: {verdict} ({tether_median:.3f} s)")
    return {"hosts": n, "rows": rows, "target_s": TARGET_SECONDS, "target_met":
            tether_median <= TARGET_SECONDS, "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "_farm":
        base, port, hosts = Path(args[1]), int(args[2]), args[3:]
        asyncio.run(_farm(base, hosts, port, base / "farm.ready"))
        return
    if args and args[0] == "_asyncssh":
        asyncio.run(_asyncssh(Path(args[1]), int(args[2]), args[3:]))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-ssh", action="store_true", help="tether only (no sshd needed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    opts = parser.parse_args(args)
    print(json.dumps(run(opts.hosts, opts.rounds, not opts.no_ssh, opts.json)))


@contextlib.contextmanager
def fleet(n: int = 50, ssh: bool = True) -> Iterator[dict[str, Callable[[], float]]]:
    """Everything set up for ``n`` hosts: yields the contenders (name -> a function that runs
    one whole process and returns its wall seconds); torn down after. The main harness can
    wrap each as ``Contender(name, lambda f=f: Sample(f()))``."""
    hosts = addresses(n)
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-fleet-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        farm, client_home = setup_tether(tmp, hosts)
        started.append(farm)
        ssh_dir, ssh_port = None, 0
        if ssh and os.access(SSHD, os.X_OK):
            sshds, ssh_dir, ssh_port = setup_sshd(tmp, hosts)
            started += sshds
        yield contenders(client_home, ssh_dir, ssh_port, hosts)
    finally:
        for proc in started:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def run(n: int = 50, rounds: int = 5, ssh: bool = True, json_path: Path | None = None
        ) -> dict[str, object]:
    """Set everything up, measure, tear down; the results (also written to ``json_path``)."""
    with fleet(n, ssh) as runs:
        result = report(measure(runs, rounds), n)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
