"""The index's Ed25519 key and DSSE envelopes: signed provenance a user checks offline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from bot.errors import WheelstockError
from bot.fsutil import atomic_write_bytes
from bot.index_pages import PROVENANCE_KEY, PROVENANCE_SUFFIX

# in-toto's DSSE payload type for Statements (in-toto attestation spec, envelope layer).
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# What a published wheel's document states: the builder's SLSA provenance and the approval.
PUBLICATION_TYPE = "urn:wheelstock:publication:v1"
KEY_FILE = "index-key.pem"  # in the state directory, never in the published tree
PUBLIC_KEY_PATH = "keys/ed25519.pub"  # in the published tree, at a fixed place


class SignatureError(WheelstockError):
    """A provenance document is not signed by the key, or does not describe the wheel."""


def load_or_create_key(state_root: Path) -> Ed25519PrivateKey:
    """The index's signing key, made on first use (mode 0600) in the state directory."""
    path = state_root / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes making the key at once must not end with two keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(state_root)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return key
    except OSError as exc:
        raise WheelstockError(f"cannot read the index key {path}: {exc.strerror}") from exc
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise WheelstockError(f"{path} is not a PEM private key") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise WheelstockError(f"{path} is not an Ed25519 key")
    return loaded


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The key's id: sha256 of its public key's DER, as hex (stable, printable)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def load_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"{where} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where} is not an Ed25519 public key")
    return key


def publish_public_key(tree: Path, key: Ed25519PrivateKey) -> Path:
    """Write the public key at its fixed place in the published tree."""
    path = tree / PUBLIC_KEY_PATH
    data = public_pem(key)
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_bytes(path, data)
    return path


def _pae(payload_type: str, payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding: what is signed is the type and the body, both
    # length-prefixed, so neither can be swapped for another that parses the same.
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign(statement: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope of ``statement`` signed with ``key``."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = key.sign(_pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(key), "sig": base64.b64encode(signature).decode()}],
    }


def open_envelope(envelope: object, key: Ed25519PublicKey) -> dict[str, Any]:
    """The statement inside a DSSE envelope, once a signature by ``key`` checks out."""
    if not isinstance(envelope, dict):
        raise SignatureError("the provenance is not a DSSE envelope")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"unexpected payloadType {envelope.get('payloadType')!r}")
    try:
        payload = base64.b64decode(str(envelope["payload"]), validate=True)
        signatures = [
            base64.b64decode(str(s["sig"]), validate=True) for s in envelope["signatures"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError("the DSSE envelope is malformed") from exc
    message = _pae(PAYLOAD_TYPE, payload)
    for signature in signatures:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        break
    else:
        raise SignatureError(f"no signature by key {key_id(key)[:16]} on the provenance")
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise SignatureError("the signed payload is not JSON") from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise SignatureError("the signed payload is not an in-toto Statement")
    return statement


def publication(
    wheel: str,
    sha256: str,
    provenance: Mapping[str, Any],
    approval: Mapping[str, Any],
) -> dict[str, Any]:
    """The statement published beside one wheel: the build's provenance and its approval."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": wheel, "digest": {"sha256": sha256}}],
        "predicateType": PUBLICATION_TYPE,
        "predicate": {
            "buildType": provenance.get("predicateType"),
            "build": provenance.get("predicate"),
            "approval": approval.get("predicate", approval),
        },
    }


# --- checking a published wheel ------------------------------------------------------------


class Verified:
    """What a checked provenance document says of a wheel (all fields from the signed part)."""

    def __init__(self, filename: str, key: str, statement: Mapping[str, Any]) -> None:
        self.filename = filename
        self.key = key
        predicate = statement.get("predicate") or {}
        build = predicate.get("build") or {}
        definition = build.get("buildDefinition") or {}
        external = definition.get("externalParameters") or {}
        self.sdist: Mapping[str, Any] = external.get("sdist") or {}
        self.feedstock: Mapping[str, Any] = external.get("feedstock") or {}
        run = build.get("runDetails") or {}
        self.builder: Mapping[str, Any] = (run.get("builder") or {}).get("version") or {}
        self.approval: Mapping[str, Any] = predicate.get("approval") or {}

    def lines(self) -> list[str]:
        tools = ", ".join(f"{k} {v}" for k, v in sorted(self.builder.items()))
        return [
            f"{self.filename}: signature ok (key {self.key[:16]}), sha256 matches",
            f"sdist: {self.sdist.get('url')} sha256 {self.sdist.get('sha256')}",
            f"feedstock: {self.feedstock.get('repository')} at {self.feedstock.get('commit')}",
            f"builder: {tools}",
            f"approved by: {self.approval.get('approver')} at {self.approval.get('approvedAt')}",
        ]


def check_wheel(
    filename: str, data_sha256: str, envelope: object, key: Ed25519PublicKey
) -> Verified:
    """Check a wheel (its name and sha256) against its signed publication statement."""
    statement = open_envelope(envelope, key)
    if statement.get("predicateType") != PUBLICATION_TYPE:
        raise SignatureError(f"the statement is a {statement.get('predicateType')!r}")
    subjects = {
        s.get("name"): (s.get("digest") or {}).get("sha256")
        for s in statement.get("subject") or []
        if isinstance(s, dict)
    }
    if filename not in subjects:
        raise SignatureError(f"the provenance is not about {filename}")
    if subjects[filename] != data_sha256:
        raise SignatureError(
            f"{filename} has sha256 {data_sha256}, the signed provenance names {subjects[filename]}"
        )
    return Verified(filename, key_id(key), statement)


def _get(client: httpx.Client, url: str, what: str, accept: str | None = None) -> bytes:
    try:
        answer = client.get(url, headers={"Accept": accept} if accept else None)
    except httpx.HTTPError as exc:
        raise SignatureError(f"cannot fetch {what} from {url}: {exc}") from exc
    if answer.status_code != 200:
        raise SignatureError(f"cannot fetch {what} from {url}: HTTP {answer.status_code}")
    return answer.content


def verify(
    target: str,
    *,
    client: httpx.Client,
    index_url: str | None = None,
    key_file: Path | None = None,
) -> Verified:
    """Check a wheel (a file or a URL) against the signed provenance the index publishes.

    The provenance is found beside a wheel URL, or through ``index_url``'s page of the project
    (for a local file; a ``<wheel>.provenance.json`` beside it is used when there is no index).
    The key is ``key_file`` (what `wheelstock index key` printed), else the index's published
    key; pinning the key is what makes the check independent of the server.
    """
    remote = target.startswith(("http://", "https://"))
    if remote:
        filename = unquote(urlsplit(target).path.rsplit("/", 1)[-1])
        data = _get(client, target, "the wheel")
    else:
        path = Path(target)
        filename = path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignatureError(f"cannot read {target}: {exc.strerror}") from exc
    try:
        project = canonicalize_name(parse_wheel_filename(filename)[0])
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise SignatureError(f"{filename} is not a wheel's file name") from exc
    provenance_url: str | None = None
    if index_url is not None:
        page_url = urljoin(index_url.rstrip("/") + "/", f"{project}/")
        page = _get(client, page_url, "the project page", "application/vnd.pypi.simple.v1+json")
        try:
            files = json.loads(page)["files"]
            (entry,) = [f for f in files if f.get("filename") == filename]
            provenance_url = urljoin(page_url, entry[PROVENANCE_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise SignatureError(f"{page_url} links no provenance for {filename}") from exc
    elif remote:
        provenance_url = target + PROVENANCE_SUFFIX
    if provenance_url is not None:
        document = _get(client, provenance_url, "the provenance")
    else:
        beside = Path(target + PROVENANCE_SUFFIX)
        try:
            document = beside.read_bytes()
        except OSError as exc:
            raise SignatureError(f"no {beside.name} beside {target}; give --index URL") from exc
    if key_file is not None:
        try:
            key = load_public_key(key_file.read_bytes(), str(key_file))
        except OSError as exc:
            raise SignatureError(f"cannot read {key_file}: {exc.strerror}") from exc
    elif provenance_url is not None:
        # files/<project>/<wheel>.provenance.json: the tree's root is two levels up.
        key_url = urljoin(provenance_url, f"../../{PUBLIC_KEY_PATH}")
        key = load_public_key(_get(client, key_url, "the index key"), key_url)
    else:
        raise SignatureError("no key to check against: give --key FILE or --index URL")
    try:
        envelope = json.loads(document)
    except ValueError as exc:
        raise SignatureError("the provenance is not JSON") from exc
    return check_wheel(filename, hashlib.sha256(data).hexdigest(), envelope, key)
