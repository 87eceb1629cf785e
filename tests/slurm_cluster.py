"""A real one-node SLURM cluster for the tests (Debian's slurm-wlm + munge), started and stopped by pytest.

Use it from a test module with ``from slurm_cluster import slurm_cluster  # noqa: F401`` and a test argument
``slurm_cluster``. The fixture (session scope):

- skips, with the reason, when not root or when slurm-wlm/munge are not installed (``.ci/run`` installs them:
  ``apt-get install -y slurm-wlm munge``); it installs nothing itself;
- writes a munge key in munge's default key file if there is none, and starts ``munged`` as the munge user,
  unless a munged already answers;
- writes ``/etc/slurm/slurm.conf`` (Debian's default config folder) for this host (``hostname -s``, ``nproc``
  CPUs, RealMemory from /proc/meminfo but at least MIN_MEMORY_MB), partitions ``debug`` (default) and ``gpu``
  (same node, no GPU), no accounting; state, spool, pid and log files
  go to a temporary folder;
- starts ``slurmctld`` and ``slurmd`` in the foreground as child processes and waits until ``sinfo`` shows the
  node idle;
- at teardown stops exactly the daemons it started, by pid, and puts back the slurm.conf that was there before.

It yields a :class:`SlurmCluster` (partition name, node name, paths of the daemons' logs, ``squeue``/``scancel``
helpers).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
PARTITION = "debug"
# A second partition on the same node under the name the config key slurm.gpu_partition defaults to, so jobs that
# ask for a GPU go where the shipped defaults send them (the node has no GPU: such a job is refused or pends).
GPU_PARTITION = "gpu"
# slurmd reports this much memory at least (SlurmdParameters=config_overrides), so rules sized for a real cluster
# (mem_mb of several GB) still schedule on a small CI machine; nothing enforces memory on this test cluster.
MIN_MEMORY_MB = 65536
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel", "scontrol", "munge")


@dataclass
class SlurmCluster:
    partition: str
    node: str
    cpus: int
    memory_mb: int
    workdir: Path
    logs: dict[str, Path] = field(default_factory=dict)

    def squeue(self) -> str:
        return _run(["squeue", "-h", "-o", "%i %j %T %R"]).stdout

    def cancel_all(self) -> None:
        """Cancel every job in the queue (the cluster is ours; used for jobs that can never start)."""
        for partition in (self.partition, GPU_PARTITION):
            _run(["scancel", "--full", "--partition", partition], check=False)

    def diagnostics(self) -> str:
        parts = [f"sinfo:\n{_run(['sinfo', '-N', '-l'], check=False).stdout}", f"squeue:\n{self.squeue()}"]
        for name, path in self.logs.items():
            if path.exists():
                parts.append(f"--- {name} ({path}), last lines:\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(parts)


def _run(cmd, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30, **kwargs)


def missing_reason() -> str | None:
    """Why a local SLURM cannot be started here (None when it can)."""
    if os.geteuid() != 0:
        return "starting a local SLURM needs root (slurmd runs jobs as their user); run the slurm tests as root"
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None and not _sbin(name)]
    if missing:
        return (
            f"slurm-wlm/munge not installed (missing {', '.join(missing)}); "
            "install with: apt-get install -y slurm-wlm munge"
        )
    return None


def _sbin(name: str) -> str | None:
    for folder in ("/usr/sbin", "/sbin", "/usr/bin"):
        path = Path(folder) / name
        if path.exists():
            return str(path)
    return None


def _which(name: str) -> str:
    found = shutil.which(name) or _sbin(name)
    if found is None:
        raise FileNotFoundError(name)
    return found


def _munge_answers() -> bool:
    try:
        return subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _slurmctld_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout.count("UP") > 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _ensure_munge_key() -> None:
    import pwd

    if MUNGE_KEY.exists() and MUNGE_KEY.stat().st_size > 0:
        return
    munge = pwd.getpwnam("munge")
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(secrets.token_bytes(1024))
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)


def slurm_conf_text(host: str, cpus: int, memory_mb: int, state: Path) -> str:
    return "\n".join(
        [
            "# Written by embedscope's tests/slurm_cluster.py for a one-node test cluster; removed at teardown.",
            "ClusterName=local",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2",
            # squeue must still list finished jobs when the plugin asks (no accounting, hence no sacct)
            "MinJobAge=600",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SlurmdParameters=config_overrides",
            f"StateSaveLocation={state / 'slurmctld'}",
            f"SlurmdSpoolDir={state / 'slurmd'}",
            f"SlurmctldPidFile={state / 'slurmctld.pid'}",
            f"SlurmdPidFile={state / 'slurmd.pid'}",
            f"SlurmctldLogFile={state / 'slurmctld.log'}",
            f"SlurmdLogFile={state / 'slurmd.log'}",
            f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={GPU_PARTITION} Nodes={host} Default=NO MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait_idle(node: str, procs: dict[str, subprocess.Popen], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while the cluster came up")
        result = _run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], check=False)
        state = result.stdout.strip()
        if state.startswith("idle"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"node {node} not idle after {timeout:.0f} s (sinfo says {state!r})")


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)

    host = socket.gethostname().split(".")[0]
    host = _run(["hostname", "-s"]).stdout.strip() or host
    cpus = os.cpu_count() or 1
    memory_mb = max(MIN_MEMORY_MB, int(_memory_mb() * 0.9))
    workdir = Path(tempfile.mkdtemp(prefix="embedscope-slurm-"))
    for sub in ("slurmctld", "slurmd"):
        (workdir / sub).mkdir()
    started: list[tuple[str, subprocess.Popen]] = []
    previous_conf = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    wrote_conf = False
    cluster = SlurmCluster(
        PARTITION,
        host,
        cpus,
        memory_mb,
        workdir,
        logs={
            "slurmctld": workdir / "slurmctld.log",
            "slurmd": workdir / "slurmd.log",
            "munged": workdir / "munged.out",
        },
    )
    try:
        if _slurmctld_answers():
            pytest.skip("a slurmctld is already running on this machine; not starting a second test cluster")

        if not _munge_answers():
            import pwd

            _ensure_munge_key()
            munge = pwd.getpwnam("munge")
            MUNGE_RUN.mkdir(parents=True, exist_ok=True)
            os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
            os.chmod(MUNGE_RUN, 0o755)
            out = open(cluster.logs["munged"], "w")  # noqa: SIM115 - kept open for the daemon's life
            proc = subprocess.Popen(
                [_which("munged"), "--foreground"],
                user=munge.pw_uid,
                group=munge.pw_gid,
                extra_groups=[],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append(("munged", proc))
            deadline = time.monotonic() + 20
            while not _munge_answers():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("munged did not come up:\n" + cluster.logs["munged"].read_text())
                time.sleep(0.2)

        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf_text(host, cpus, memory_mb, workdir))
        wrote_conf = True

        daemons = {}
        for name in ("slurmctld", "slurmd"):
            out = open(workdir / f"{name}.out", "w")  # noqa: SIM115
            proc = subprocess.Popen([_which(name), "-D"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            started.append((name, proc))
            daemons[name] = proc
            if name == "slurmctld":
                deadline = time.monotonic() + 30
                while not _slurmctld_answers():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("slurmctld did not come up:\n" + cluster.diagnostics())
                    time.sleep(0.3)
        try:
            _wait_idle(host, daemons)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{cluster.diagnostics()}") from error
        yield cluster
    finally:
        if started:
            for partition in (PARTITION, GPU_PARTITION):
                subprocess.run(["scancel", "--full", "--partition", partition], capture_output=True, timeout=30)
        for name, proc in reversed(started):
            _stop(proc, name)
        if wrote_conf:
            if previous_conf is None:
                SLURM_CONF.unlink(missing_ok=True)
            else:
                SLURM_CONF.write_bytes(previous_conf)
        shutil.rmtree(workdir, ignore_errors=True)
