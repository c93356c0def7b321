"""medidd-aggregate: dev certificates that verify, and config errors that say what was meant."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.run import app_pyproject, connection_toml
from medidd.federation import FederationConfig


def test_make_certs_writes_a_ca_a_server_cert_for_localhost_and_supernode_keys(
    tmp_path: Path,
) -> None:
    res = CliRunner().invoke(app, ["make-certs", "--out", str(tmp_path), "--supernode", "a"])
    assert res.exit_code == 0, res.output
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the chain does not hold
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    assert server.not_valid_after_utc > dt.datetime.now(dt.UTC)
    key = load_ssh_private_key((tmp_path / "supernode-keys" / "a").read_bytes(), None)
    pub = load_ssh_public_key((tmp_path / "supernode-keys" / "a.pub").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
    assert (tmp_path / "supernode-keys" / "a").stat().st_mode & 0o077 == 0


def test_train_reports_a_mistyped_option_with_a_suggestion(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--set", "strategy=fedavgg", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 2
    assert "did you mean 'fedavg'" in res.output


def test_the_simulation_needs_nodes(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "nodes:" in res.output


def test_the_deployment_app_embeds_the_config_as_valid_toml(tmp_path: Path) -> None:
    import tomllib

    cfg = FederationConfig.model_validate({"strategy": "fedavg", "expected_nodes": ['a"b']})
    data = tomllib.loads(app_pyproject(cfg, tmp_path))
    conf = data["tool"]["flwr"]["app"]["config"]
    assert FederationConfig.model_validate_json(conf["config-json"]) == cfg
    assert conf["out-dir"] == str(tmp_path.resolve())
    conn = tomllib.loads(connection_toml("127.0.0.1:9", tmp_path / "ca.crt", False))
    assert conn["superlink"]["medidd"]["root-certificates"].endswith("ca.crt")


def test_the_cli_names_its_options_for_the_config_keys_in_library_messages() -> None:
    from aggregator.cli import with_options
    from medidd.federation.policy import CollectionPolicy, policy_problems
    from medidd.package.manifest import example_manifest

    reasons, _ = policy_problems(example_manifest(audit={"status": "passed"}),
                                 CollectionPolicy(max_images=2), task="sr")
    text = with_options("; ".join(reasons))
    assert "--set policy.max_images=..." in text and "--set task=..." in text
    assert "config key" not in text
    node = "node x has no patients configured: set node config key 'patients'"
    assert with_options(node) == node  # a hospital's setting, not one of this CLI's
