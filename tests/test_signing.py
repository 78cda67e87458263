"""Signed provenance: every published wheel has one, and `wheelstock verify` checks it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bot import serve, signing
from bot.cli import main

from conftest import Workspace
from projects import fixture_sdist

WHEEL = "demo-1.0-py3-none-any.whl"


def test_sign_and_open_round_trip_and_refusals(tmp_path: Path) -> None:
    key = signing.load_or_create_key(tmp_path)
    again = signing.load_or_create_key(tmp_path)
    assert signing.key_id(key) == signing.key_id(again)  # made once, then read
    assert (tmp_path / signing.KEY_FILE).stat().st_mode & 0o777 == 0o600
    statement = signing.publication(
        WHEEL, "a" * 64, {"predicateType": "p", "predicate": {}}, {"predicate": {"approver": "a"}}
    )
    envelope = signing.sign(statement, key)
    assert signing.open_envelope(envelope, key.public_key()) == statement
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(signing.SignatureError, match="no signature by key"):
        signing.open_envelope(envelope, other)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "b" * 64
    forged = {**envelope, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    with pytest.raises(signing.SignatureError, match="no signature by key"):
        signing.open_envelope(forged, key.public_key())
    with pytest.raises(signing.SignatureError, match="names"):
        signing.check_wheel(WHEEL, "c" * 64, envelope, key.public_key())
    with pytest.raises(signing.SignatureError, match="not about"):
        signing.check_wheel("other-1.0-py3-none-any.whl", "a" * 64, envelope, key.public_key())


@pytest.fixture
def published(workspace: Workspace, tmp_path: Path) -> Iterator[str]:
    ws = workspace
    ws.enrol("demo", "alice")
    ws.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    assert ws.run("tick").code == 0
    assert ws.run("review", "approve", "demo", "1.0", "--as", "alice").code == 0
    server = serve.make_server(ws.state / "index", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_published_wheel_verifies_by_url_and_by_index(
    workspace: Workspace, published: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = json.loads((workspace.state / "index" / "simple" / "demo" / "index.json").read_text())
    (ours,) = [f for f in page["files"] if f["url"].startswith("../")]
    assert ours["wheelstock-provenance"] == f"../../files/demo/{WHEEL}.provenance.json"
    html = (workspace.state / "index" / "simple" / "demo" / "index.html").read_text()
    assert f'data-wheelstock-provenance="../../files/demo/{WHEEL}.provenance.json"' in html

    code, out, err = verify(capsys, f"{published}files/demo/{WHEEL}")
    assert code == 0, err
    assert f"{WHEEL}: signature ok" in out
    assert "sdist: " in out and "demo-1.0.tar.gz" in out
    assert "feedstock: demo-feedstock at " in out
    assert "approved by: alice at " in out
    assert "builder: " in out and "wheelstock" in out

    # `index key` prints the key the tree publishes; pinning it works for a local file too.
    capsys.readouterr()
    assert main(["index", "key", "--state-dir", str(workspace.state)]) == 0
    pem = capsys.readouterr().out
    assert pem == (workspace.state / "index" / "keys" / "ed25519.pub").read_text()
    key = tmp_path / "index.pub"
    key.write_text(pem)
    local = tmp_path / WHEEL
    local.write_bytes((workspace.state / "index" / "files" / "demo" / WHEEL).read_bytes())
    code, out, err = verify(capsys, str(local), "--index", f"{published}simple/", "--key", str(key))
    assert code == 0, err


def test_tampered_wheel_statement_or_key_fail(
    workspace: Workspace, published: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = workspace.state / "index" / "files" / "demo"
    tampered = tmp_path / WHEEL
    tampered.write_bytes(files.joinpath(WHEEL).read_bytes() + b"\0")
    code, _, err = verify(capsys, str(tampered), "--index", f"{published}simple/")
    assert code == 1 and err.startswith("error: ") and "the signed provenance names" in err

    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(signing.public_pem(Ed25519PrivateKey.generate()))
    code, _, err = verify(capsys, f"{published}files/demo/{WHEEL}", "--key", str(wrong))
    assert code == 1 and "no signature by key" in err

    document = files / f"{WHEEL}.provenance.json"
    envelope = json.loads(document.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["approval"]["approver"] = "mallory"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    document.write_text(json.dumps(envelope))
    code, _, err = verify(capsys, f"{published}files/demo/{WHEEL}")
    assert code == 1 and "no signature by key" in err
    assert "Traceback" not in err
