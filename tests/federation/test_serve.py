"""medidd-node serve's library side: the SuperNode command line and the early refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from hospital_node.serve import node_config_string, node_settings, serve, supernode_command
from medidd.federation import NodeRefusal, NodeSettings
from tests.federation.conftest import MakePackage


def test_node_config_survives_flowers_own_parser(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "my pkg's", name="site-a", patients=tmp_path / "p q",
                             override_audit=True)
    config = {k.replace("_", "-"): (str(v) if isinstance(v, Path) else v)
              for k, v in settings.model_dump().items() if v is not None}
    parsed = parse_config_args([node_config_string(config)])
    assert NodeSettings.from_node_config(parsed) == settings


def test_supernode_command_uses_tls_and_the_auth_key(tmp_path: Path) -> None:
    cmd = supernode_command("127.0.0.1:9092", {"name": "a"}, root_certificates=tmp_path / "ca",
                            auth_private_key=tmp_path / "key", port=9500)
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "key")
    assert "--insecure" not in cmd


def test_serve_refuses_a_failed_audit_before_starting_a_supernode(
    make_package: MakePackage,
) -> None:
    settings = node_settings(make_package("failed"), name="site-a")
    with pytest.raises(NodeRefusal, match="audit status 'failed'"):
        serve("127.0.0.1:1", settings)
    with pytest.raises(ValueError, match="both who"):
        serve("127.0.0.1:1", settings, override_by="dr-who")
