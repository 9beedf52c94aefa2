"""A socket proxy of a test's own: the project's (`python -m gateway.sockproxy`), in front of the local
engine or a private one, started and stopped at will without touching the shared proxy."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from gateway.setup.probe import unix_http_status
from tests.support.net import accepts
from tests.support.waiting import eventually

__all__ = ["ENGINE_SOCKET", "PrivateProxy"]

REPO = Path(__file__).resolve().parents[2]
#: The local engine's own socket.
ENGINE_SOCKET = Path("/var/run/docker.sock")


@dataclass
class PrivateProxy:
    """A second socket proxy in front of `docker_socket`, on a unix socket in `workdir` or, given
    `tcp_port`, on TLS at `host`:`tcp_port` (its certificate options in `extra`). With `image` it
    lets sandboxes of that image be made, with the repository's skills as their mount source. Its
    log (stdout and stderr) is `workdir/socket-proxy.log`. `prefix` runs it through a command that
    execs it, such as `nsenter --net=/run/netns/NS` to listen inside a network namespace."""

    workdir: Path
    docker_socket: Path = ENGINE_SOCKET
    extra: tuple[str, ...] = ()
    _: KW_ONLY
    image: str | None = None
    tcp_port: int | None = None
    host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "docker-proxy.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "socket-proxy.log"

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.tcp_port}" if self.tcp_port is not None else f"unix://{self.socket}"

    def argv(self) -> list[str]:
        listen = f"tls:{self.host}:{self.tcp_port}" if self.tcp_port is not None else f"unix:{self.socket}"
        argv = [*self.prefix, sys.executable, "-m", "gateway.sockproxy", "--listen", listen]
        argv += ["--engine", str(self.docker_socket)]
        if self.image is not None:
            argv += ["--image", self.image, "--mount-source", str(REPO / "skills")]
        return [*argv, *self.extra]

    def listening(self) -> bool:
        if self.tcp_port is not None:
            return accepts(self.tcp_port, self.host)
        return unix_http_status(self.socket, timeout=1) == 200

    def start(self) -> None:
        """Start it and wait until it answers (the unix socket's /_ping) or accepts connections (TLS)."""
        with self.log.open("ab") as log:
            process = subprocess.Popen(self.argv(), stdout=log, stderr=log, cwd=REPO)
        self.process = process

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the private proxy exited: {self.log.read_text()[-500:]}")
            return self.listening()

        try:
            eventually(up, timeout_s=10, message="the private proxy did not start")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
