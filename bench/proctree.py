"""CPU and memory of a command's whole process tree, for the end-to-end benchmark scripts.

CPU from the kernel's accounting of reaped children (getrusage), which holds every exited
descendant its parent waited for - this process makes itself a child subreaper so that a JVM its
launcher does not wait for is still ours to reap - plus /proc samples every 0.2 s for peak RSS (the largest sum over the live tree) and a
per-command CPU split. Linux only. Used by bench/flink/run and bench/spark/run.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

SAMPLE_SECONDS = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_SECONDS = 60


@dataclass
class Measured:
    returncode: int
    stdout: str
    wall_seconds: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    # From /proc samples: a lower bound (CPU after the last sample is missed), kept as a check.
    cpu_sampled_seconds: float
    cpu_sampled_by_process: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_seconds + self.cpu_system_seconds


def read_stat(pid: int) -> tuple[int, int, float, int, str] | None:
    """(parent pid, start time in ticks, own user+system CPU seconds, RSS bytes, command name),
    or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    parent = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    start = int(fields[19])
    rss = int(fields[21]) * PAGE_SIZE
    return parent, start, cpu, rss, name


def descendants(root: int) -> dict[int, tuple[int, float, int, str]]:
    """Every live process under `root`, root included: pid -> (start, cpu seconds, rss, name)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat[0], []).append(pid)
    tree = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in stats and pid not in tree:
            _, start, cpu, rss, name = stats[pid]
            tree[pid] = (start, cpu, rss, name)
            pending.extend(children.get(pid, []))
    return tree


def become_subreaper() -> None:
    """Makes orphaned descendants our children, so their CPU time reaches our RUSAGE_CHILDREN
    instead of init's (pyspark's JVM may outlive the python that started it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")


def reap_orphans() -> None:
    """Waits for the descendants that outlived the command (a JVM shutting down), so their CPU
    time is counted; one still alive after ORPHAN_GRACE_SECONDS is killed."""
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if time.monotonic() > deadline:
            for orphan in descendants(os.getpid()):
                if orphan != os.getpid():
                    print(f"killing leftover process {orphan}", file=sys.stderr)
                    os.kill(orphan, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)


def measure(command: list[str], env: dict[str, str], cwd: str | None = None) -> Measured:
    """Runs `command` (stdout captured, stderr passed through) and measures its tree. Call it
    with no other children running: RUSAGE_CHILDREN counts them all."""
    become_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    job = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=cwd, text=True)
    # Keyed by (pid, start time, name) so a reused pid or an exec'd process is its own entry
    # (the launcher execs java under the same pid).
    last_cpu: dict[tuple[int, int, str], float] = {}
    peak_rss = 0
    while job.poll() is None:
        tree = descendants(job.pid)
        peak_rss = max(peak_rss, sum(rss for _, _, rss, _ in tree.values()))
        for pid, (start, cpu, _, name) in tree.items():
            last_cpu[(pid, start, name)] = cpu
        time.sleep(SAMPLE_SECONDS)
    output = job.stdout.read() if job.stdout else ""
    reap_orphans()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_name: dict[str, float] = {}
    for (_, _, name), seconds in last_cpu.items():
        by_name[name] = round(by_name.get(name, 0.0) + seconds, 3)
    return Measured(
        returncode=job.returncode,
        stdout=output,
        wall_seconds=wall,
        cpu_user_seconds=after.ru_utime - before.ru_utime,
        cpu_system_seconds=after.ru_stime - before.ru_stime,
        cpu_sampled_seconds=sum(last_cpu.values()),
        cpu_sampled_by_process=by_name,
        peak_rss_bytes=peak_rss,
    )
