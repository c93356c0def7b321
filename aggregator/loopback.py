"""A real Flower deployment on 127.0.0.1: a SuperLink with TLS and SuperNode authentication,
registered SuperNode keys, SuperNodes started as processes of their own.

What the deployment tests and the loopback load test (``benchmarks/load_test.py``) run; every
process is started and ended through :class:`~aggregator.procs.Procs` (by PID, with its
descendants). The SuperLink binds 127.0.0.1 only, runs with
``--disable-runtime-dependency-installation`` and every process gets its own ``FLWR_HOME``
with telemetry off.

Example (not run here: it starts processes)::

    certs = make_dev_certificates(tmp / "certs", supernodes=("a", "b"))
    procs = Procs(tmp / "logs")
    try:
        link = start_superlink(certs, tmp, procs)
        link.register("a")
        link.supernode("a", {"name": "site-a", "package": "/data/pkg"})
    finally:
        procs.stop_all()
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.procs import BIN, Procs, flower_env, free_port
from hospital_node.serve import supernode_command


@dataclass
class Loopback:
    """A running SuperLink: its address, the processes, the dev certificates, the ``flwr``
    CLI's home (a connection named ``medidd``), the folder for the nodes' homes, and more
    environment for every SuperNode (e.g. ``PYTHONPATH`` for a ClientApp outside medidd)."""

    address: str
    procs: Procs
    certs: dict[str, Path]
    cli_home: Path
    root: Path
    node_env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` against this SuperLink."""
        return subprocess.run([str(BIN / "flwr"), *args], env=flower_env(self.cli_home),
                              capture_output=True, text=True, timeout=60, check=False)

    def register(self, name: str, tries: int = 10) -> None:
        """Register SuperNode key ``name`` (``certs[name + ".public"]``) with the SuperLink."""
        for _ in range(tries):
            res = self.cli("supernode", "register", str(self.certs[f"{name}.public"]), "medidd")
            if res.returncode == 0 and "registered" in res.stdout:
                return
        raise RuntimeError(f"could not register {name}: {res.stdout}\n{res.stderr}")

    def supernode(self, name: str, node_config: Mapping[str, object], *, key: str | None = None,
                  ca: bool = True, max_retries: int | None = None) -> str:
        """Start a SuperNode (TLS, authenticated with key ``key or name``) on a free port;
        returns its process name in :attr:`procs`."""
        cmd = supernode_command(
            self.address, node_config,
            root_certificates=self.certs["ca_cert"] if ca else None,
            auth_private_key=self.certs[f"{key or name}.private"], port=free_port(),
            max_retries=max_retries)
        env = flower_env(self.root / f"home-{name}")
        env.update(self.node_env)
        self.procs.start(f"supernode-{name}", cmd, env)
        return f"supernode-{name}"


def superlink_command(certs: Mapping[str, Path], port: int) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication, no runtime dependency
    installation, on 127.0.0.1:``port``.

    Example:
        >>> cmd = superlink_command({"ca_cert": Path("ca"), "server_cert": Path("s"),
        ...                          "server_key": Path("k")}, 9092)
        >>> "--enable-supernode-auth" in cmd, cmd[-4:]
        (True, ['--host', '127.0.0.1', '--port', '9092'])
    """
    return [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs["ca_cert"]),
            "--ssl-certfile", str(certs["server_cert"]), "--ssl-keyfile",
            str(certs["server_key"]), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
            "--port", str(port)]


def start_superlink(certs: dict[str, Path], root: Path, procs: Procs, *,
                    startup_s: float = 60.0, node_env: Mapping[str, str] | None = None
                    ) -> Loopback:
    """Start the SuperLink (process ``superlink`` in ``procs``) and wait until it serves;
    the ``flwr`` CLI's home gets a connection named ``medidd`` to it; ``node_env`` is added
    to every SuperNode's environment."""
    certs = {k: Path(v).resolve() for k, v in certs.items()}  # Flower wants absolute paths
    root = Path(root).resolve()
    port = free_port()
    cli_home = root / "cli-home"
    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "medidd"\n\n[superlink.medidd]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs["ca_cert"]}"\n')
    link = Loopback(f"127.0.0.1:{port}", procs, certs, cli_home, root, dict(node_env or {}))
    procs.start("superlink", superlink_command(certs, port),
                flower_env(root / "superlink-home"))
    if not procs.wait_log("superlink", "Uvicorn running on https://", startup_s):
        raise RuntimeError("the SuperLink did not start:\n" + procs.log("superlink")[-2000:])
    return link
