"""Signed grant receipts: Ed25519 over canonical JSON, verifiable offline with the public key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cellsched.errors import BadInput, Failed


def key_paths(cluster_path: Path) -> tuple[Path, Path]:
    """(private, public) key files beside the cluster config."""
    return cluster_path.parent / "cellsched.key", cluster_path.parent / "cellsched.pub"


def create_keys(private: Path, public: Path) -> bool:
    """Create the cluster key pair if absent (private part readable by its owner only)."""
    if private.exists():
        return False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return True


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(payload: dict[str, Any], private: Path) -> str:
    """The receipt: JSON with the payload and its base64 signature."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except FileNotFoundError:
        raise BadInput(f"{private}: no cluster key (run `cellsched init`)") from None
    sig = key.sign(_canonical(payload))  # type: ignore[call-arg, union-attr]
    return json.dumps({"payload": payload, "signature": base64.b64encode(sig).decode()}, sort_keys=True)


def verify(receipt: str, public: Path) -> dict[str, Any]:
    """Check a receipt's signature; return its payload or raise :class:`Failed`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        doc = json.loads(receipt)
        payload, sig = doc["payload"], base64.b64decode(doc["signature"])
    except (ValueError, KeyError, TypeError):
        raise Failed("receipt is not well-formed") from None
    try:
        key = serialization.load_pem_public_key(public.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{public}: no public key") from None
    try:
        key.verify(sig, _canonical(payload))  # type: ignore[call-arg, union-attr]
    except InvalidSignature:
        raise Failed("receipt signature does not match the cluster key") from None
    return payload
