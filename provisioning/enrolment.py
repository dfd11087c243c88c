"""The box's side of enrolment: its P-256 key and request, installing a startup kit, and what it is enrolled as.

State lives in ``$MAMMO_HOME/provisioning/`` (0700)::

    box-key.sealed     the box's P-256 private key, sealed under a key the keystore derives (purpose ``provisioning-box-key``)
    box-key.pub.pem    its public half (what the request and the certificate carry)
    kit.json           the installed startup kit, exactly as the authority signed it
    settings.toml      the kit's initial settings: a layer under mammo.toml and the environment

Install checks everything first (``provisioning.kit.check_kit``, the HE secret
opens with the box key and matches its digest, the settings are valid) and only
then writes ``settings.toml`` and ``kit.json``, each atomically.  A refused kit
leaves the folder byte for byte as it was.  The installed kit pins its
authority: a later kit signed by another CA is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import IntegrityError, KitRefused, ProvisioningError, SettingsError
from provisioning import he
from provisioning.envelope import open_sealed, seal
from provisioning.files import private_dir, write_atomic, write_new
from provisioning.keystore import Keystore
from provisioning.kit import RECOVER, Kit, SigningKey, check_kit, check_kit_settings, he_aad, iso, open_for, parse_kit
from provisioning.pki import cert_pem, make_csr, new_box_key, public_der

KEY_FILE, PUB_FILE, KIT_FILE, SETTINGS_FILE = "box-key.sealed", "box-key.pub.pem", "kit.json", "settings.toml"
KEY_PURPOSE = "provisioning-box-key"


class HasHome(Protocol):
    """What :func:`folder_of` needs of the box's settings: only its home (provisioning does not import the daemon's Settings)."""

    @property
    def home(self) -> Path: ...


def folder_of(settings: HasHome) -> Path:
    return settings.home / "provisioning"


def make_request(keystore: Keystore, folder: Path) -> bytes:
    """The box's certificate request (PEM CSR, CN = box id). The key is made once and reused, so renewals certify the same key."""
    private_dir(folder)
    if (folder / KEY_FILE).exists():
        key = load_box_key(keystore, folder)
    else:
        key = new_box_key()
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        write_new(folder / KEY_FILE, seal(keystore.secret(KEY_PURPOSE), der, aad=_key_aad(keystore.box_id)))
        write_atomic(folder / PUB_FILE, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return make_csr(key, keystore.box_id).public_bytes(serialization.Encoding.PEM)


def load_box_key(keystore: Keystore, folder: Path) -> ec.EllipticCurvePrivateKey:
    path = folder / KEY_FILE
    if not path.exists():
        raise ProvisioningError(f"This box has no enrolment key yet ({path}). Fix: run `mammo provision request --out FILE` and have the authority issue a kit from it.")
    try:
        key = serialization.load_der_private_key(open_sealed(keystore.secret(KEY_PURPOSE), path.read_bytes(), aad=_key_aad(keystore.box_id)), None)
    except IntegrityError:
        raise ProvisioningError(f"{path} does not open with this box's keystore (damaged, or from another box). Fix: restore it from backup, or make a new request.") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisioningError(f"{path} holds no P-256 key. Fix: make a new request.")
    return key


def installed_kit(folder: Path) -> Kit | None:
    path = folder / KIT_FILE
    if not path.exists():
        return None
    try:
        return parse_kit(path.read_bytes())
    except KitRefused as exc:
        raise ProvisioningError(f"The installed kit {path} is damaged ({exc}). Fix: install the kit again from its USB copy.") from None


def install(raw: bytes, *, keystore: Keystore, folder: Path, pinned_authority: str | None = None, now: dt.datetime | None = None) -> Kit:
    """Check a kit completely, then make it the box's enrolment; raise KitRefused (box unchanged) on any failure."""
    now = now or dt.datetime.now(dt.UTC)
    kit = parse_kit(raw)
    key = load_box_key(keystore, folder)
    current = installed_kit(folder)
    pin = pinned_authority or (current.authority_fingerprint if current else None)
    check_kit(kit, box_id=keystore.box_id, box_public_der=public_der(key), pinned_authority=pin, installed=current, now=now)
    secret = open_for(key, kit.he_sealed, he_aad(kit.box_id, kit.he_version))
    if he.sha256(secret) != kit.he_sha256:
        raise KitRefused(f"The kit's HE context does not match its digest. Fix: have the kit issued again. {RECOVER}")
    try:
        he.load_context(secret, need_secret=True)
        check_kit_settings(kit.settings)
    except (ProvisioningError, SettingsError) as exc:
        raise KitRefused(f"{exc} {RECOVER}") from None
    write_atomic(folder / SETTINGS_FILE, settings_toml(kit.settings).encode())
    write_atomic(folder / KIT_FILE, raw)
    return kit


def he_secret_context(keystore: Keystore, folder: Path) -> bytes:
    """The clinics' CKKS context with its secret key, opened from the installed kit (for encrypting and decrypting updates)."""
    kit = installed_kit(folder)
    if kit is None:
        raise ProvisioningError("This box is not enrolled, so it has no HE context. Fix: install a startup kit (`mammo provision install KIT`).")
    return open_for(load_box_key(keystore, folder), kit.he_sealed, he_aad(kit.box_id, kit.he_version))


def status(folder: Path, box_id: str | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """What `mammo provision status` reports; needs no passphrase (everything shown is public)."""
    now = now or dt.datetime.now(dt.UTC)
    kit = installed_kit(folder)
    base: dict[str, Any] = {"enrolled": False, "box_id": box_id, "requested": (folder / KEY_FILE).exists(), "state": "not enrolled"}
    if kit is None:
        return base | {k: None for k in ("certificate_expires", "days_left", "authority_fingerprint", "coordinator", "he_context_sha256",
                                         "he_version", "model_signing_key_fingerprint", "model_signing_version", "certificate_serial")}
    signing = kit.active_signing_key
    expired = now > kit.not_after
    return base | {
        "enrolled": True,
        "box_id": kit.box_id,
        "state": "expired" if expired else "enrolled",
        "certificate_expires": iso(kit.not_after),
        "days_left": int((kit.not_after - now).total_seconds() // 86400),
        "certificate_serial": f"{kit.certificate.serial_number:x}",
        "authority_fingerprint": kit.authority_fingerprint,
        "coordinator": kit.coordinator,
        "he_context_sha256": kit.he_sha256,
        "he_version": kit.he_version,
        "model_signing_key_fingerprint": signing.fingerprint,
        "model_signing_version": signing.version,
        "model_signing_keys": [{"version": k.version, "status": k.status, "verify_until": iso(k.verify_until) if k.verify_until else None} for k in kit.signing_keys],
        "settings": kit.settings,
    }


def model_signing_keys(folder: Path) -> tuple[SigningKey, ...]:
    """The federation's model-signing public keys from the installed kit (empty when not enrolled), for ``kit.verify_release``."""
    kit = installed_kit(folder)
    return kit.signing_keys if kit else ()


def certificate_pem(folder: Path) -> str | None:
    kit = installed_kit(folder)
    return cert_pem(kit.certificate) if kit else None


def settings_toml(values: dict[str, Any]) -> str:
    """Flat TOML of the kit's settings (kept as the strings the authority gave; Settings coerces them when loading)."""
    lines = ["# Initial settings from the installed startup kit; mammo.toml and MAMMO_* variables override them."]
    lines += [f"{key} = {json.dumps(str(value), ensure_ascii=False)}" for key, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


def _key_aad(box_id: str) -> bytes:
    return f"mammo box key {box_id}".encode()
