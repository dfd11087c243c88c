"""Startup kits: what the authority hands a box on a USB stick, and the checks a box makes before trusting one.

A kit is one JSON file::

    {"format": "mammo-kit/1", "payload": base64(JSON), "signature": base64(ECDSA-P256-SHA256 by the CA key)}

The payload carries the box certificate, the CA certificate, the coordinator
address, the model-signing public keys (active and retired, with the date
until which a retired key still verifies old releases), the initial settings
and the clinics' HE secret context.  That context is a secret shared by every
clinic, so it travels encrypted to the box's own P-256 key (ECDH with an
ephemeral key, HKDF-SHA256, AES-256-GCM): a kit copied off the USB stick
gives nothing to anyone but its box.

``parse_kit`` and ``check_kit`` are pure: bytes, the box's identity, the
pinned authority and a clock in, a :class:`Kit` or ``KitRefused`` out.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.errors import KitRefused, ProvisioningError

# A declared edge to the daemon (pyproject.toml, [tool.importlinter]): a kit's initial settings are checked against
# the very schema the box loads them with (fields, secret flags, coercion); a copy here would drift from it.
from edge_agent.settings import Settings
from provisioning.pki import box_id_of, fingerprint, key_fingerprint, public_der, signed_by

FORMAT = "mammo-kit/1"
SEAL_ALG = "ECDH-P256/HKDF-SHA256/AES-256-GCM"
# How far behind the authority's clock a box's clock may be when it installs a kit.
CLOCK_SKEW = dt.timedelta(minutes=10)
RECOVER = "Nothing on the box was changed."


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SigningKey:
    """A model-signing public key; a retired one verifies releases only until ``verify_until``."""

    version: int
    public_key_pem: str
    status: str
    verify_until: dt.datetime | None

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(serialization.load_pem_public_key(self.public_key_pem.encode()).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    def usable_at(self, now: dt.datetime) -> bool:
        return self.status == "active" or (self.verify_until is not None and now <= self.verify_until)


@dataclass(frozen=True)
class Kit:
    """A parsed kit whose signature verified against the CA it carries (``check_kit`` decides whether to trust that CA)."""

    raw: bytes
    box_id: str
    issued_at: dt.datetime
    certificate: x509.Certificate
    ca: x509.Certificate
    coordinator: str | None
    signing_keys: tuple[SigningKey, ...]
    he_version: int
    he_sha256: str
    he_sealed: dict[str, str]
    settings: dict[str, Any]

    @property
    def authority_fingerprint(self) -> str:
        return fingerprint(self.ca)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def active_signing_key(self) -> SigningKey:
        return next(k for k in self.signing_keys if k.status == "active")


def seal_for(public_key: ec.EllipticCurvePublicKey, plaintext: bytes, aad: bytes) -> dict[str, str]:
    """Encrypt to a box's P-256 key (ECIES): only the holder of its private key can open it."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    nonce = os.urandom(12)
    ciphertext = AESGCM(_kdf(ephemeral.exchange(ec.ECDH(), public_key), aad)).encrypt(nonce, plaintext, aad)
    return {"alg": SEAL_ALG, "ephemeral": b64(public_der(ephemeral)), "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


def open_for(private_key: ec.EllipticCurvePrivateKey, sealed: dict[str, str], aad: bytes) -> bytes:
    try:
        if sealed.get("alg") != SEAL_ALG:
            raise ValueError(sealed.get("alg"))
        peer = serialization.load_der_public_key(unb64(sealed["ephemeral"]))
        if not isinstance(peer, ec.EllipticCurvePublicKey):
            raise ValueError("ephemeral key")
        key = _kdf(private_key.exchange(ec.ECDH(), peer), aad)
        return AESGCM(key).decrypt(unb64(sealed["nonce"]), unb64(sealed["ciphertext"]), aad)
    except (InvalidTag, ValueError, KeyError):
        raise KitRefused(f"The kit's HE secret is not encrypted to this box's key. Fix: issue the kit from this box's own request. {RECOVER}") from None


def _kdf(shared: bytes, aad: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mammo-kit/1 he-secret " + aad).derive(shared)


def check_kit_settings(values: dict[str, Any]) -> None:
    """Refuse initial settings a kit must not carry: secrets (a kit is readable on the stick), where the box keeps its data,
    and the box's own trust anchor (an authority must not be able to re-pin a box to another authority)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    banned = sorted(k for k in values if k == "home" or k.startswith(("provision_", "authority_")) or (k in fields and fields[k].metadata.get("secret")))
    if banned:
        raise ProvisioningError(f"A kit may not set {', '.join(banned)} (secrets, the data folder and the box's trust anchor stay local). Fix: set them on the box itself.")
    Settings.from_mapping(values, source="the kit's initial settings")


def he_aad(box_id: str, version: int) -> bytes:
    """Binds a sealed HE secret to its box and version: the authority seals and the box opens with these bytes."""
    return f"he-secret v{version} for {box_id}".encode()


def sign_kit(payload: dict[str, Any], ca_key: ec.EllipticCurvePrivateKey) -> bytes:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    signature = ca_key.sign(body, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"format": FORMAT, "payload": b64(body), "signature": b64(signature)}, indent=1).encode()


def parse_kit(raw: bytes) -> Kit:
    """Read a kit and verify its signature against the CA inside it; KitRefused if unreadable or altered."""
    try:
        outer = json.loads(raw)
        if not isinstance(outer, dict) or outer.get("format") != FORMAT:
            raise ValueError("format")
        body, signature = unb64(outer["payload"]), unb64(outer["signature"])
        p = json.loads(body)
        ca = x509.load_pem_x509_certificate(p["ca_chain"][0].encode())
    except (ValueError, KeyError, TypeError, IndexError, UnicodeError):
        raise KitRefused(f"This file is not a readable startup kit (damaged, truncated or tampered with). Fix: copy the kit from the authority again. {RECOVER}") from None
    ca_key = ca.public_key()
    try:
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        ca_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise KitRefused(f"The kit's signature does not verify: it was altered after the authority signed it. Fix: copy the kit from the authority again, or have it issued again. {RECOVER}") from None
    try:
        keys = tuple(
            SigningKey(int(k["version"]), str(k["public_key"]), str(k["status"]), dt.datetime.fromisoformat(k["verify_until"]) if k.get("verify_until") else None)
            for k in p["model_signing"]
        )
        return Kit(
            raw=raw,
            box_id=str(p["box_id"]),
            issued_at=dt.datetime.fromisoformat(p["issued_at"]),
            certificate=x509.load_pem_x509_certificate(p["certificate"].encode()),
            ca=ca,
            coordinator=p.get("coordinator"),
            signing_keys=keys,
            he_version=int(p["he"]["version"]),
            he_sha256=str(p["he"]["sha256"]),
            he_sealed=dict(p["he"]["sealed"]),
            settings=dict(p.get("settings") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise KitRefused(f"The kit is signed but incomplete ({exc}); it was made by an incompatible authority version. Fix: issue it again. {RECOVER}") from None


def check_kit(kit: Kit, *, box_id: str, box_public_der: bytes, pinned_authority: str | None, installed: Kit | None, now: dt.datetime) -> None:
    """Decide whether this box may install ``kit``; raise KitRefused naming the reason and the fix."""
    fp = kit.authority_fingerprint
    if pinned_authority is not None and fp != pinned_authority:
        raise KitRefused(
            f"The kit is signed by another authority (CA {fp[:16]}...), not the one this box trusts ({pinned_authority[:16]}...). "
            f"Fix: use a kit from your federation's authority. {RECOVER}"
        )
    if not signed_by(kit.certificate, kit.ca):
        raise KitRefused(f"The kit's box certificate is not issued by the kit's CA. Fix: have the kit issued again. {RECOVER}")
    cert_box = box_id_of(kit.certificate.subject)
    if cert_box != box_id or kit.box_id != box_id:
        raise KitRefused(f"This kit is for box {cert_box}, but this box is {box_id}. Fix: install the kit issued from this box's own request. {RECOVER}")
    if public_der(_ec_public(kit.certificate)) != box_public_der:
        raise KitRefused(
            f"The kit certifies another key than this box's current one (the box key was made again since the request). "
            f"Fix: run `mammo provision request` and have a new kit issued from it. {RECOVER}"
        )
    starts = max(kit.issued_at, kit.certificate.not_valid_before_utc, kit.ca.not_valid_before_utc)
    if now + CLOCK_SKEW < starts:
        raise KitRefused(
            f"The kit is not valid yet: it was issued at {iso(kit.issued_at)} but this box's clock reads {iso(now)}. "
            f"Fix: set the box's date and time (timedatectl set-time), then install again. {RECOVER}"
        )
    if now > kit.not_after:
        raise KitRefused(f"The kit's certificate expired on {iso(kit.not_after)} (box clock {iso(now)}). Fix: ask the authority for a new kit (`mammo provision issue`). {RECOVER}")
    if now > kit.ca.not_valid_after_utc:
        raise KitRefused(f"The federation CA expired on {iso(kit.ca.not_valid_after_utc)}. Fix: the authority must create a new CA and re-enrol every box. {RECOVER}")
    if installed is not None and kit.issued_at < installed.issued_at:
        raise KitRefused(
            f"The kit was issued at {iso(kit.issued_at)}, before the one installed ({iso(installed.issued_at)}): installing it would roll the box back. "
            f"Fix: use the newest kit. {RECOVER}"
        )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KitRefused(f"The kit's certificate holds no P-256 key. Fix: have the kit issued again. {RECOVER}")
    return key


def verify_release(keys: tuple[SigningKey, ...], signature: bytes, data: bytes, now: dt.datetime) -> int:
    """Return the version of the signing key that verifies ``signature``; retired keys count only until their date."""
    for key in keys:
        if not key.usable_at(now):
            continue
        pub = serialization.load_pem_public_key(key.public_key_pem.encode())
        if not isinstance(pub, Ed25519PublicKey):
            continue
        try:
            pub.verify(signature, data)
        except InvalidSignature:
            continue
        return key.version
    expired = [k.version for k in keys if not k.usable_at(now)]
    hint = f" (keys {expired} are retired past their verify-until date)" if expired else ""
    raise ProvisioningError(f"The release's signature does not verify with this federation's model-signing keys{hint}. Fix: install the release as signed by the coordinator.")
