"""What every benchmark here shares: the machine description, CPU time, and the JSON report.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this module is imported by name
from the benchmarks folder.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import socket
import subprocess

from recordio_tools.files import write_json_atomic


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def machine_info() -> dict:
    """Host, CPU model and cores, Python, and the versions of the libraries a figure depends on."""
    info = {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 2)}
    for module, key in (("torch", "torch"), ("nvidia.dali", "dali"), ("faiss", "faiss"), ("PIL", "pillow")):
        try:
            info[key] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            continue
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished child processes: unlike wall time,
    it does not grow when other work shares the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_seconds_with_live_children() -> float:
    """User + system CPU time of this process and of its still-running children (DataLoader workers,
    which RUSAGE_CHILDREN does not see until they exit), read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2])
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def default_out(name: str) -> str:
    """benchmarks/out/<name>_<host>_<date>.json"""
    today = datetime.date.today().isoformat()
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", f"{name}_{socket.gethostname()}_{today}.json")


def write_report(report: dict, out: str | None, name: str) -> str:
    """Write the JSON report (atomically) to `out` or the default path; returns the path."""
    path = os.path.abspath(out or default_out(name))
    write_json_atomic(path, report, indent=1, newline=False, make_parents=True)
    print(f"wrote {path}")
    return path


def baseline_tree(rev: str, tmp: str) -> str:
    """git revision `rev`'s fftrain and recordio_tools, extracted under `tmp`: a folder to put first on
    PYTHONPATH, so a benchmark can alternate that code with this tree's in one run."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dest = os.path.join(tmp, "baseline")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", repo, "archive", rev, "fftrain", "recordio_tools"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest
