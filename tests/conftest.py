"""Shared fixtures: a fresh box home per test, and the ../shared data when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.box import open_box
from edge_agent.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"})


@pytest.fixture
def box(settings: Settings):
    b = open_box(settings, interactive=False)
    yield b
    b.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED}); this test needs the shared real-data corpus")
    return SHARED


class ReleaseSigner:
    """A test release-signing key: ``pinned`` pins it beside the software's own key (for ``ModelRegistry(pinned_keys=...)``),
    so a test may rebuild a release's manifest and sign it again; the real private key is never in the repository."""

    def __init__(self, folder: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from edge_agent.inference.activation import PINNED_KEYS_FILE

        self.key = Ed25519PrivateKey.generate()
        public = self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.pinned = folder / "pinned-test-keys.pem"
        self.pinned.write_bytes(PINNED_KEYS_FILE.read_bytes() + b"# test key\n" + public)

    def sign(self, release: Path) -> Path:
        from edge_agent.inference.activation import sign_release

        return sign_release(release, self.key)


@pytest.fixture
def release_signer(tmp_path: Path) -> ReleaseSigner:
    return ReleaseSigner(tmp_path)
