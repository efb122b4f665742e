"""A throwaway PostgreSQL server for the tests, from Debian's packages, on 127.0.0.1.

``server()`` finds PostgreSQL's binaries (``/usr/lib/postgresql/<version>/bin``), installing
them once with ``apt-get update`` and ``apt-get install -y postgresql`` when they are missing
and this process is root, then ``initdb`` a new cluster in a temporary folder and starts it on
a free port, listening on 127.0.0.1 only, with trust authentication for the user
``vaesweep`` (nothing else can reach it). PostgreSQL refuses to run as root: as root, the
cluster is run as the ``postgres`` user of the package (``runuser``). ``stop()`` removes it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "vaesweep"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be installed or started here (the reason is the message)."""


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install() -> Path:
    """PostgreSQL's bin folder, installing the Debian package first if needed."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("PostgreSQL is not installed, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if res.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-500:]}")
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise Unavailable("apt-get installed postgresql but no initdb was found")
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL cluster on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.bin = install()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="vaesweep-pg-"))
        self.root.chmod(0o755)
        self.data, self.sockets, self.log = self.root / "data", self.root / "run", self.root / "log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running PostgreSQL as root needs runuser")
            try:
                import pwd
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("no `postgres` user to run the server as") from None
            self.as_user = [runuser, "-u", "postgres", "--"]
        for d in (self.data, self.sockets):
            d.mkdir()
        if self.as_user:
            shutil.chown(self.root, "postgres")
            for d in (self.data, self.sockets):
                shutil.chown(d, "postgres")

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True,
                             timeout=timeout, cwd=self.root)
        if res.returncode != 0:
            raise Unavailable(f"`{Path(cmd[0]).name}` failed: {(res.stderr or res.stdout)[-800:]}")
        return res

    def start(self) -> "Server":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.log), "-w", "-t", "60", "start")
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise Unavailable(f"the server did not listen: {self.log.read_text()[-500:]}")
                time.sleep(0.2)
        return self

    def url(self, db: str, driver: str = "") -> str:
        """``postgresql[+driver]://vaesweep@127.0.0.1:PORT/db``."""
        return f"postgresql{'+' + driver if driver else ''}://{USER}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg2
        con = psycopg2.connect(self.url("postgres"))
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60,
                           cwd=self.root)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def server() -> Server:
    """A started server (raises :class:`Unavailable` with the reason when there can be none)."""
    return Server().start()
