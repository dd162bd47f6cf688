"""Every peer, set up on loopback in one temporary directory and torn down at the end.

- an OpenSSH server (``/usr/sbin/sshd -D -f CONFIG``) with its own host key, authorized key,
  free port and PidFile, and an ssh client config beside it (``ssh -F``), so nothing in ~/.ssh or
  /etc is read or written; a ControlMaster socket for the multiplexed case. By default its
  sessions get ``SHLVL=1`` (``SetEnv``): bash then counts itself nested and does not source
  ~/.bashrc for an ssh command — just as tether's ``bash -c`` does not — so a heavy shell setup
  (pyenv init costs ~90 ms here) is not charged to ssh, scp, rsync or AsyncSSH. ``--ssh-rc``
  keeps the user's shell startup, as a plain ``ssh HOST cmd`` has it;
- ``tether serve`` subprocesses with throwaway identities (TLS), or ``--plaintext``;
- a tmpfs for transfer destinations: mounted under the temporary directory when we are root,
  else a directory in /dev/shm when it is big enough.

Only processes started here are stopped, by PID; the mount is unmounted and the directory removed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import GiB, MiB
from bench.prereqs import SSHD, tether_bin
from bench.procs import BenchError, ServerProbe, all_listening, free_port, stop, wait_until

HOST = "127.0.0.1"
SSH_ALIAS = "bench"
SSHD_NAMES = frozenset({"sshd", "sshd-session", "sftp-server"})
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server")

SSHD_MAX_LISTEN = 16  # sshd's MAX_LISTEN_SOCKS: ListenAddress lines one sshd accepts

# one template for the main sshd and the fleet workload's (which listen on up to 16 addresses)
SSHD_CONFIG = """\
{listen}
HostKey {dir}/host_ed25519
PidFile {dir}/{name}.pid
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
Subsystem sftp {sftp}
{setenv}"""

# the alias names the main sshd; the rest also serves ``ssh -F CONFIG -p PORT ADDRESS`` (fleet)
SSH_CONFIG = """\
Host {alias}
  HostName {host}
  Port {port}
Host *
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
  ForwardAgent no
  ForwardX11 no
  LogLevel ERROR
"""


def _keygen(path: Path) -> str:
    """An unencrypted Ed25519 key at ``path``; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tether-bench",
                    "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    """A private sshd on a free loopback port and the client-side files that reach it."""

    dir: Path
    port: int
    user: str
    shell_rc: bool = False
    proc: subprocess.Popen[bytes] | None = None
    master: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def control_path(self) -> Path:
        return self.dir / "master.sock"

    @property
    def probe(self) -> ServerProbe:
        assert self.proc is not None
        return ServerProbe(self.proc.pid, SSHD_NAMES)

    def ssh(self, *args: str, master: bool = False) -> list[str]:
        """``ssh -F CONFIG [-o ControlPath=SOCK] ARGS``."""
        via = ["-o", f"ControlPath={self.control_path}"] if master else []
        return ["ssh", "-F", str(self.config), *via, *args]

    def scp(self, *args: str) -> list[str]:
        return ["scp", "-F", str(self.config), "-q", *args]

    def rsync(self, *args: str) -> list[str]:
        return ["rsync", "-e", f"ssh -F {self.config}", *args]

    def assh(self, verb: str, *args: str, port: int | None = None) -> list[str]:
        """``python -m bench.assh VERB`` with this sshd's user, key and known hosts."""
        return [sys.executable, "-m", "bench.assh", verb, "--port", str(port or self.port),
                "--user", self.user, "--key", str(self.key),
                "--known-hosts", str(self.known_hosts), *args]

    def write_files(self) -> None:
        self.dir.mkdir(mode=0o700)
        _keygen(self.dir / "host_ed25519")
        client_pub = _keygen(self.key)
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        self.known_hosts.write_text("")
        self.trust([HOST], self.port)
        self.config.write_text(SSH_CONFIG.format(dir=self.dir, port=self.port, user=self.user,
                                                 host=HOST, alias=SSH_ALIAS))

    def trust(self, hosts: Sequence[str], port: int) -> None:
        """Pin the host key for ``hosts`` at ``port`` in the client's known_hosts."""
        host_pub = " ".join((self.dir / "host_ed25519.pub").read_text().split()[:2])
        with self.known_hosts.open("a") as fh:
            fh.writelines(f"[{h}]:{port} {host_pub}\n" for h in hosts)

    def launch(self, name: str, hosts: Sequence[str], port: int) -> subprocess.Popen[bytes]:
        """An sshd with this directory's keys on ``port`` of each of ``hosts`` (at most 16),
        its config, PidFile and log named after ``name``; returned once it listens on all."""
        if not 1 <= len(hosts) <= SSHD_MAX_LISTEN:
            raise ValueError(f"one sshd listens on 1 to {SSHD_MAX_LISTEN} addresses")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        sftp = next((s for s in SFTP_SERVERS if os.access(s, os.X_OK)), "internal-sftp")
        cfg, log = self.dir / f"{name}_config", self.dir / f"{name}.log"
        cfg.write_text(SSHD_CONFIG.format(
            listen="\n".join(f"ListenAddress {h}:{port}" for h in hosts), dir=self.dir,
            name=name, user=self.user, sftp=sftp,
            setenv="" if self.shell_rc else "SetEnv SHLVL=1\n"))
        check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"sshd rejects its config: {check.stderr.strip()}")
        proc = subprocess.Popen([SSHD, "-D", "-f", str(cfg), "-E", str(log)],
                                stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: all_listening(hosts, port) or proc.poll() is not None, 10, name)
            if proc.poll() is not None:
                raise BenchError(f"{name} exited: {log.read_text(errors='replace').strip()}")
        except BaseException:
            stop(proc)
            raise
        return proc

    def start(self) -> None:
        self.proc = self.launch("sshd", [HOST], self.port)
        probe = subprocess.run(self.ssh(SSH_ALIAS, "true"), capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=30)
        if probe.returncode != 0:
            raise BenchError(f"ssh to the private sshd failed: {probe.stderr.strip()}")

    def start_master(self) -> None:
        """A ControlMaster in the foreground (we keep its PID), ready when its socket answers."""
        self.master = subprocess.Popen(
            self.ssh("-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", SSH_ALIAS,
                     master=True),
            stdin=subprocess.DEVNULL,
        )

        def ready() -> bool:
            check = self.ssh("-O", "check", SSH_ALIAS, master=True)
            return subprocess.run(check, capture_output=True).returncode == 0

        wait_until(ready, 15, "the ssh ControlMaster")

    def close(self) -> None:
        if self.master is not None:
            stop(self.master)
        if self.proc is not None:
            stop(self.proc)


@dataclass
class TetherServer:
    """One ``tether serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    plaintext: bool

    @property
    def probe(self) -> ServerProbe:
        # the server is this one process; the commands it runs are not counted
        return ServerProbe(self.proc.pid)

    def cli_flags(self) -> list[str]:
        return ["-p", str(self.port), *(["--plaintext"] if self.plaintext else [])]


class Peers:
    """The temporary directory and everything running in it (a context manager)."""

    def __init__(self, fast_bytes: int, shell_rc: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
        self.fast_bytes = fast_bytes
        self.fast = self.tmp / "fast"
        self.fast_kind = ""
        self.client_home = self.tmp / "tether-client"
        self.server_home = self.tmp / "tether-server"
        self.tether = tether_bin() or Path("tether")
        self.sshd = Sshd(self.tmp / "ssh", free_port(), getpass.getuser(), shell_rc)
        self._mounted = False
        self._shm: Path | None = None
        self._servers: list[subprocess.Popen[bytes]] = []

    # --- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Peers:
        try:
            self._make_fast()
            self._make_identities()
            self.sshd.write_files()
            self.sshd.start()
            self.sshd.start_master()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._servers:
            stop(proc)
        self.sshd.close()
        if self._mounted:
            subprocess.run(["umount", str(self.fast)], check=False)
        if self._shm is not None:
            shutil.rmtree(self._shm, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.fast.unlink()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- tmpfs ---------------------------------------------------------------------------------

    def _make_fast(self) -> None:
        """A tmpfs for sources and destinations: our own mount, /dev/shm, or (say so) disk."""
        self.fast.mkdir()
        size = self.fast_bytes + 256 * MiB
        if os.geteuid() == 0:
            mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tether-bench",
                     str(self.fast)]
            if subprocess.run(mount, capture_output=True).returncode == 0:
                self._mounted, self.fast_kind = True, f"tmpfs mounted at {self.fast}"
                return
        shm = Path("/dev/shm")
        if shm.is_dir() and shutil.disk_usage(shm).free > size + GiB:
            self._shm = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=shm))
            self.fast.rmdir()
            self.fast.symlink_to(self._shm)
            self.fast_kind = f"tmpfs /dev/shm ({self._shm})"
            return
        self.fast_kind = f"NOT tmpfs: {self.fast} (no room in /dev/shm and not root)"

    # --- tether --------------------------------------------------------------------------------

    def _make_identities(self) -> None:
        from tether.identity import AuthorizedClient, add_authorized, generate_identity

        self.server_id = generate_identity(self.server_home, "bench-server", "server")
        client = generate_identity(self.client_home, "bench-client", "client")
        add_authorized(self.server_home, AuthorizedClient(client.cert_der, client.name))

    @contextlib.contextmanager
    def tether_server(self, plaintext: bool = False, root: Path | None = None
                      ) -> Iterator[TetherServer]:
        """A fresh ``tether serve`` (so each workload sees its own memory), stopped after;
        ``root`` (default: the tmpfs) is where relative paths resolve."""
        server = self.start_tether(plaintext, root or self.fast)
        try:
            yield server
        finally:
            stop(server.proc)
            self._servers.remove(server.proc)

    def start_tether(self, plaintext: bool, root: Path, env: dict[str, str] | None = None
                     ) -> TetherServer:
        """A ``tether serve`` (``env``: its environment, e.g. a PYTHONPATH for another tree),
        stopped when the peers are, or by the caller."""
        from tether.identity import add_known_host

        log = self.tmp / f"serve-{len(self._servers)}-{os.urandom(3).hex()}.log"
        argv = [str(self.tether), "serve", "--home", str(self.server_home), "-p", "0",
                "--root", str(root), *(["--plaintext"] if plaintext else [])]
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err, env=env)
        self._servers.append(proc)
        found: list[int] = []

        def listening() -> bool:
            match = re.search(rf"listening on {re.escape(HOST)}:(\d+)", log.read_text())
            if match:
                found.append(int(match.group(1)))
            if proc.poll() is not None:
                raise BenchError(f"tether serve exited: {log.read_text().strip()}")
            return bool(match)

        wait_until(listening, 20, "tether serve")
        if not plaintext:
            add_known_host(self.client_home, HOST, found[0], self.server_id.fingerprint)
        return TetherServer(proc, found[0], plaintext)

    def tether_cli(self, *args: str) -> list[str]:
        """``tether ARGS`` with ``--home`` inserted after the subcommand."""
        return [str(self.tether), args[0], "--home", str(self.client_home), *args[1:]]

    def new_dir(self, name: str) -> Path:
        """A fresh, empty directory on the tmpfs."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.fast))
        path.chmod(0o755)
        return path
