"""``labelloop annotators create|list|revoke``: the admin's tokens from the command line."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from labelloop.api.app import create_app
from labelloop.cli import app
from labelloop.config import Settings
from labelloop.runtime import Runtime

runner = CliRunner()


def test_tokens_from_the_command_line(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    made = runner.invoke(app, ["annotators", "create", "Grace Hopper", *data])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert token.startswith("llann_")
    listed = runner.invoke(app, ["annotators", "list", *data], terminal_width=200)
    assert listed.exit_code == 0 and "Grace Hopper" in listed.output
    assert token not in listed.output

    rt = Runtime(Settings(data_dir=tmp_path))
    try:
        with TestClient(create_app(rt, manage_jobs=False)) as c:
            me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
            assert me["annotator"] == "Grace Hopper"
            revoked = runner.invoke(app, ["annotators", "revoke", "1", *data])
            assert revoked.exit_code == 0 and "revoked" in revoked.output
            again = c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
            assert again["role"] == "admin"  # a server without a token: an unknown token is nobody
    finally:
        rt.close()

    blank = runner.invoke(app, ["annotators", "create", "   ", *data])
    assert blank.exit_code == 2 and "annotator" in blank.output and "Traceback" not in blank.output
    missing = runner.invoke(app, ["annotators", "revoke", "42", *data])
    assert missing.exit_code == 2 and "no annotator token 42" in missing.output
