"""Run a command inside new network and PID namespaces that hold only the loopback interface
(for the Ray tests: no Ray process can bind or advertise another address, and every process
the command starts ends with it). Needs root (``unshare -n -p``), as in CI.

    python tests/loopback.py CMD ARGS…     # inside: lo up, only lo present, then exec CMD
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
UNSHARE = ["unshare", "-n", "-p", "-f", "--mount-proc"]


def refused() -> str | None:
    """Why new network and PID namespaces cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"unshare -n -p not permitted here (needs root): {r.stderr.strip()}"


def lo_up() -> None:
    """Bring ``lo`` up (the ioctl ``ip link set lo up`` makes; no iproute2 needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def links() -> list[str]:
    """The network interfaces of this process's namespace."""
    return [name for _, name in socket.if_nameindex()]


def run_isolated(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``argv`` inside the namespaces (Ray's usage stats and token auth off: nothing leaves lo)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           **(env or {})}
    return subprocess.run([*UNSHARE, sys.executable, __file__, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


if __name__ == "__main__":
    lo_up()
    if links() != ["lo"]:
        sys.exit(f"loopback.py: interfaces besides lo in the namespace: {links()}")
    os.execvp(sys.argv[1], sys.argv[1:])
