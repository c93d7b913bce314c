"""Network namespaces for multi-host tests: each "host" a network stack of its own, joined to
the test's (root) namespace by a veth pair. Needs root and a kernel that allows namespaces;
`netns_refusal()` says why not (checked at run time, for a clear skip). Always cleaned up."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

_SUBNET = 214  # 10.214.<n>.0/30 per host: apart from other tests' ranges


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def netns_refusal() -> str | None:
    """Why network namespaces can't be used here, or None if they can (tries one)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`), and this runs as a user"
    probe = f"jrprobe-{secrets.token_hex(3)}"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        return f"the kernel refused a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


class Host:
    """Namespace `ns`, reached from the root namespace at `inner_ip` over veth `outer`/`inner`;
    the root side of the pair is `outer_ip`."""

    def __init__(self, index: int) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"jrh-{tag}"
        self.outer, self.inner = f"jho{tag}", f"jhi{tag}"
        third = (int(tag[:2], 16) + 7 * index) % 256
        self.outer_ip, self.inner_ip = f"10.{_SUBNET}.{third}.1", f"10.{_SUBNET}.{third}.2"

    @property
    def exec(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host."""
        return ("ip", "netns", "exec", self.ns)

    def create(self) -> None:
        ip("netns", "add", self.ns)
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.ns)
        ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        ip("-n", self.ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner)
        ip("-n", self.ns, "link", "set", self.inner, "up")
        ip("-n", self.ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        for args in (("link", "del", self.outer), ("netns", "del", self.ns)):
            subprocess.run(["ip", *args], capture_output=True, timeout=10, check=False)


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """`count` namespaces, each on its own veth pair to the root namespace; removed after."""
    made: list[Host] = []
    try:
        for index in range(count):
            host = Host(index)
            made.append(host)
            host.create()
        yield made
    finally:
        for host in made:
            host.remove()
