"""Workload 8: an Ansible playbook of small tasks on several hosts, whole ``ansible-playbook``
process: the tether connection plugin (``tether.remote.tether``, workers sharing connections
through ``tether mux``) against Ansible's ``ssh`` connection with pipelining and ControlPersist,
and against Ansible's ``local`` connection (no transport at all: the floor).

The hosts are loopback addresses from 127.0.0.2 on, as in the fleet workload: the tether servers
are one process (``python -m bench.farm``), the sshds one per 16 addresses. The playbook cycles
through ``command``, ``copy``, ``stat`` and ``file`` (``--quick``: 8 tasks on 2 hosts; full: 100
on 5). Every round starts cold: no mux and no ControlPersist master is left from the round
before (so there is no warm-up round); a full run has 2 rounds, each minutes long. Besides
the wall time each sample records the controller's CPU seconds
(``ansible-playbook`` and every worker it reaped, plus the detached mux or ssh masters) and the
targets' (the tether farm or the sshds, with the commands they reaped; none for ``local``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from bench import REPO
from bench.config import Context
from bench.peers import SSHD_MAX_LISTEN, Peers
from bench.procs import BenchError, free_port, stop, tail
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.fleet import addresses, tether_farm

PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
TASKS = ("command", "copy", "stat", "file")


def playbook(path: Path, tasks: int) -> None:
    """``tasks`` small tasks, cycling through :data:`TASKS`, each writing under its host's dir."""
    lines = ["- hosts: all", "  gather_facts: false", "  tasks:",
             "    - file: {path: '{{ bench_dir }}/{{ inventory_hostname }}', state: directory}"]
    for i in range(tasks):
        kind = TASKS[i % len(TASKS)]
        where = f"{{{{ bench_dir }}}}/{{{{ inventory_hostname }}}}/f{i // len(TASKS) % 8}"
        if kind == "command":
            lines.append(f"    - command: echo {i}")
        elif kind == "copy":
            lines.append(f"    - copy: {{content: 'task {i}\\n', dest: '{where}'}}")
        elif kind == "stat":
            lines.append(f"    - stat: {{path: '{where}'}}")
        else:
            lines.append(f"    - file: {{path: '{where}', mode: '0{640 + i % 2 * 4}'}}")
    path.write_text("\n".join(lines) + "\n")


class Project:
    """One contender's ansible.cfg and inventory in a directory of its own."""

    def __init__(self, root: Path, name: str, hosts: Sequence[str], cfg: str,
                 host_vars: str) -> None:
        self.dir = root / name
        self.dir.mkdir()
        (self.dir / "tmp").mkdir()
        self.dir.joinpath("ansible.cfg").write_text(
            "[defaults]\ninventory = inventory.ini\nforks = 10\ngathering = explicit\n"
            f"retry_files_enabled = false\nremote_tmp = {self.dir}/tmp\n"
            f"local_tmp = {self.dir}/local-tmp\ncollections_path = {REPO}\n{cfg}")
        rows = [f"h{h.rsplit('.', 1)[1]} ansible_host={h} {host_vars}" for h in hosts]
        self.dir.joinpath("inventory.ini").write_text(
            "[all]\n" + "\n".join(rows) + f"\n\n[all:vars]\nansible_python_interpreter={PYTHON}\n")

    def argv(self, book: Path, bench_dir: Path) -> list[str]:
        binary = Path(sys.executable).with_name("ansible-playbook")
        return [str(binary), str(book), "-e", f"bench_dir={bench_dir}"]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        return {**env, "ANSIBLE_CONFIG": str(self.dir / "ansible.cfg"), "LANG": "C.UTF-8",
                **extra}


def _cpu(pid: int) -> float:
    """CPU seconds of a live process and of the children it has reaped."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def _detached(pattern: str) -> list[psutil.Process]:
    """Processes this run left detached on the controller (a mux, ssh masters), by a path that
    only this benchmark's temporary directory contains."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(pattern in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def _own_cpu(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _timed(ctx: Context, name: str, project: Project, book: Path, targets: Sequence[int],
           detached: str, finish: Sequence[Sequence[str]], env: dict[str, str]) -> Sample:
    """One ``ansible-playbook`` run: wall time, controller and target CPU seconds."""
    bench_dir = ctx.peers.new_dir(f"ansible-{name}")
    log = ctx.log(f"ansible-{name}")
    before = sum(_cpu(pid) for pid in targets)
    with open(log, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(project.argv(book, bench_dir), cwd=project.dir, env=env,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    controller = usage.ru_utime + usage.ru_stime
    leftovers = _detached(detached)
    controller += _own_cpu(leftovers)
    for argv in finish:  # end the round's shared connections (the mux)
        subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False)
    for leftover in leftovers:  # and ControlPersist masters: ours, by the path only we use
        with contextlib.suppress(psutil.Error):
            if leftover.is_running():
                leftover.terminate()
            leftover.wait(10)
    _settle(targets)
    target = sum(_cpu(pid) for pid in targets) - before
    if proc.returncode != 0:
        raise BenchError(f"ansible-playbook ({name}) exited {proc.returncode}: {tail(log, 2000)}")
    return Sample(seconds, {"controller_cpu_s": round(controller, 3),
                            "target_cpu_s": round(target, 3)})


def _settle(targets: Sequence[int], timeout: float = 10.0) -> None:
    """Wait until the servers have reaped their sessions' processes (so that their CPU time is
    in the servers' children times)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(psutil.Process(pid).children() for pid in targets):
                return
        except psutil.Error:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def _sshds(peers: Peers, hosts: Sequence[str]) -> Iterator[tuple[int, list[int]]]:
    port = free_port(hosts[0])
    peers.sshd.trust(hosts, port)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for part, first in enumerate(range(0, len(hosts), SSHD_MAX_LISTEN)):
            started.append(peers.sshd.launch(f"sshd-ansible{part}",
                                             hosts[first:first + SSHD_MAX_LISTEN], port))
        yield port, [p.pid for p in started]
    finally:
        for proc in started:
            stop(proc)


def run(ctx: Context) -> list[GroupResult]:
    peers = ctx.peers
    hosts = addresses(ctx.sizes.ansible_hosts)
    book = peers.tmp / "ansible-playbook.yml"
    playbook(book, ctx.sizes.ansible_tasks)
    root = peers.tmp / "ansible"
    root.mkdir()
    with tether_farm(peers, hosts, "tether-ansible-client") as home, \
            _sshds(peers, hosts) as (port, sshd_pids):
        farm = [p.pid for p in _detached(f"{peers.server_home}") if "bench.farm" in
                " ".join(p.cmdline())]
        if not farm:
            raise BenchError("cannot find the tether farm's process")
        from tether.inventory import load

        tport = next(iter(load(home).hosts.values())).port
        tether = Project(root, "tether", hosts,
                         "", f"ansible_connection=tether.remote.tether ansible_port={tport} "
                         f"tether_home={home} ansible_pipelining=true tether_mux=auto")
        ssh_dir = root / "cp"
        ssh_dir.mkdir()
        ssh = Project(
            root, "ssh", hosts,
            "[ssh_connection]\npipelining = true\n"
            f"ssh_args = -F {peers.sshd.config} -o ControlMaster=auto -o ControlPersist=60s\n"
            f"control_path_dir = {ssh_dir}\n",
            f"ansible_connection=ssh ansible_port={port} ansible_user={peers.sshd.user}")
        local = Project(root, "local", hosts, "", "ansible_connection=local")
        stop_mux = [str(peers.tether), "mux", "stop", "--home", str(home)]
        n = ctx.sizes.ansible_tasks
        group = Group(
            key="ansible",
            title=f"ansible-playbook: {n} small tasks (command, copy, stat, file) on "
                  f"{len(hosts)} hosts",
            unit="s", better="lower", quantity="time",
            contenders=[
                Contender("tether plugin", lambda: _timed(
                    ctx, "tether", tether, book, farm, str(home), [stop_mux],
                    tether.env(TETHER_HOME=str(home))),
                    "ansible_connection=tether.remote.tether (mux auto, pipelining)",
                    tether=True),
                Contender("ssh pipelining+ControlPersist", lambda: _timed(
                    ctx, "ssh", ssh, book, sshd_pids, str(ssh_dir), [], ssh.env()),
                    "ansible_connection=ssh, pipelining, ControlPersist=60s"),
                Contender("local", lambda: _timed(
                    ctx, "local", local, book, [], str(local.dir), [], local.env()),
                    "ansible_connection=local (no transport)"),
            ],
            rounds=2 if ctx.sizes.mode == "full" else None,  # a full round is minutes long
            targets=[
                Target(">= 2x faster than ssh with pipelining and ControlPersist",
                       "tether plugin", "<=", 0.5, peer="ssh pipelining+ControlPersist"),
                Target("faster than the local connection", "tether plugin", "<=", 1.0,
                       peer="local"),
            ],
        )
        # no warm-up: every round starts cold by design (no mux, no ControlPersist master)
        return [run_group(group, ctx.sizes.rounds, 0)]
