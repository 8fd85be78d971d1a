"""SSH private keys of every type paramiko signs with, in OpenSSH and PEM formats, with and
without a passphrase; keys that cannot be used fail with a message that never shows them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from components import remote
from components.remote import RemoteError
from tests.unit.test_remote import LABEL, FakeHost, conn, public_base64

PASSPHRASE = b"correct horse battery staple"
GENERATORS: dict[str, Callable[[], Any]] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
FORMATS = {
    "openssh": serialization.PrivateFormat.OpenSSH,
    "pem-traditional": serialization.PrivateFormat.TraditionalOpenSSL,  # BEGIN RSA/EC PRIVATE KEY
    "pem-pkcs8": serialization.PrivateFormat.PKCS8,  # BEGIN (ENCRYPTED) PRIVATE KEY
}
CASES = [(k, f) for k in GENERATORS for f in FORMATS if not (k == "ed25519" and f == "pem-traditional")]


def key_text(key: Any, fmt: str, password: bytes | None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, FORMATS[fmt], encryption).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {name: generate() for name, generate in GENERATORS.items()}


@pytest.mark.parametrize("protected", [False, True], ids=["plain", "passphrase"])
@pytest.mark.parametrize(("kind", "fmt"), CASES)
def test_every_key_type_and_format_loads(
    keys: dict[str, Any], tmp_path: Path, kind: str, fmt: str, protected: bool
) -> None:
    key = keys[kind]
    path = tmp_path / "id"
    path.write_text(key_text(key, fmt, PASSPHRASE if protected else None))
    loaded = remote.load_private_key(path.read_text(), PASSPHRASE.decode() if protected else None, LABEL)
    assert loaded.get_base64() == public_base64(key)
    assert loaded.can_sign()


@pytest.mark.parametrize("kind", ["ecdsa-p256", "rsa-2048"])
def test_a_passphrase_protected_key_logs_in(tmp_path: Path, keys: dict[str, Any], kind: str) -> None:
    """The whole path: connection with privateKeyPassphrase -> authenticated session."""
    key = keys[kind]
    home = tmp_path / "home"
    home.mkdir()
    host = FakeHost(home, key)
    try:
        c = {
            **conn(host, key),
            "privateKey": key_text(key, "openssh", PASSPHRASE),
            "privateKeyPassphrase": PASSPHRASE.decode(),
        }
        out, _ = remote.run_script(c, "echo in\n", {}, LABEL)
        assert out == "in\n"
    finally:
        host.close()


def test_a_passphrase_for_a_key_without_one_is_ignored(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    assert remote.load_private_key(key_text(key, "openssh", None), "unused", LABEL).get_base64() == public_base64(key)


@pytest.mark.parametrize("fmt", ["openssh", "pem-pkcs8"])
def test_a_protected_key_without_its_passphrase_says_so(keys: dict[str, Any], fmt: str) -> None:
    text = key_text(keys["ecdsa-p256"], fmt, PASSPHRASE)
    with pytest.raises(RemoteError) as info:
        remote.load_private_key(text, None, LABEL)
    assert str(info.value).startswith(
        f"{LABEL}: connection.privateKey is passphrase-protected and no passphrase was given (fix: "
    )


@pytest.mark.parametrize("fmt", ["openssh", "pem-pkcs8"])
def test_a_wrong_passphrase_says_so(keys: dict[str, Any], fmt: str) -> None:
    text = key_text(keys["rsa-2048"], fmt, PASSPHRASE)
    with pytest.raises(RemoteError) as info:
        remote.load_private_key(text, "wrong", LABEL)
    assert "cannot be decrypted: wrong passphrase or damaged key (fix: " in str(info.value)


def test_an_unparsable_key_fails_clearly_without_printing_it() -> None:
    body = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    text = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"
    for candidate in (text, "not a key at all " + body):
        with pytest.raises(RemoteError) as info:
            remote.load_private_key(candidate, None, LABEL)
        message = str(info.value)
        assert message.startswith(f"{LABEL}: connection.privateKey is not an OpenSSH or PEM private key (fix: ")
        assert body not in message and "BEGIN" not in message


def test_a_key_type_ssh_cannot_use_here_is_named() -> None:
    key = dsa.generate_private_key(key_size=2048)
    with pytest.raises(RemoteError) as info:
        remote.load_private_key(key_text(key, "pem-pkcs8", None), None, LABEL)
    assert "which SSH cannot use here (fix: use an Ed25519, ECDSA or RSA key)" in str(info.value)
