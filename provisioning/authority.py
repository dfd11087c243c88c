"""The federation's authority: a folder on the operator's machine holding the CA, the model-signing keys and the HE material.

Layout (folder 0700, files 0600)::

    authority.json            metadata: versions, issued certificates, revoked boxes, KDF salt; HMAC-ed under the passphrase key
    ca.pem / ca.key.sealed    the federation CA (ECDSA P-256)
    crl.pem                   the CA-signed revocation list the coordinator enforces
    signing-vN.pub.pem / signing-vN.key.sealed     model-signing keys (Ed25519)
    he-vN.public.tenseal      CKKS context without secret key, for the coordinator
    he-vN.secret.sealed       CKKS context with secret key, for clinic kits only

Every private part is sealed (``provisioning.envelope``) under a key derived
from the operator's passphrase by Argon2id, once per command.  Rotation adds
version N+1 and marks the old one retired: never used to sign or encrypt again,
still listed (a retired signing key verifies old releases until its
``verify_until`` date) so nothing already shipped breaks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hmac
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.errors import IntegrityError, MammoError, ProvisioningError
from provisioning import he
from provisioning.envelope import open_sealed, seal
from provisioning.files import private_dir, write_atomic, write_new
from provisioning.keystore import KdfParams
from provisioning.kit import b64, check_kit_settings, he_aad, iso, seal_for, sign_kit, unb64
from provisioning.pki import MAX_BOX_CERT_DAYS, cert_pem, fingerprint, issue_box_cert, key_fingerprint, make_ca, read_request
from provisioning.revocation import build_crl

FORMAT = "mammo-authority/1"
DEFAULT_VERIFY_DAYS = 180
SERVER_CERT_DAYS = 365


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Authority:
    folder: Path
    meta: dict[str, Any]
    ca: x509.Certificate
    _kek: bytes
    _ca_key: ec.EllipticCurvePrivateKey

    # --- opening ------------------------------------------------------------
    @classmethod
    def init(cls, folder: Path, passphrase: str, *, name: str = "MammoAI-TR Federation", he_params: he.HeParams | None = None,
             kdf: KdfParams | None = None, now: dt.datetime | None = None) -> Authority:
        """Create a new authority in an empty (or absent) folder; never touches an existing one."""
        now, he_params, kdf = now or utcnow(), he_params or he.HeParams(), kdf or KdfParams()
        if len(passphrase) < 8:
            raise ProvisioningError("The authority passphrase must have at least 8 characters. Fix: set MAMMO_AUTHORITY_PASSPHRASE or type a longer one.")
        if (folder / "authority.json").exists():
            raise ProvisioningError(f"{folder} already holds an authority; refusing to overwrite it. Fix: choose another folder, or use the existing one.")
        if folder.exists() and any(folder.iterdir()):
            raise ProvisioningError(f"{folder} is not empty (an interrupted init, or other files); refusing to mix an authority into it. Fix: give an empty or new folder.")
        private_dir(folder)
        salt = os.urandom(16)
        kek = _derive(passphrase, salt, kdf)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = make_ca(ca_key, name, now)
        meta: dict[str, Any] = {
            "format": FORMAT, "name": name, "created_at": iso(now), "ca_fingerprint": fingerprint(ca),
            "kdf": {"name": "argon2id", "salt": b64(salt), "time_cost": kdf.time_cost, "memory_kib": kdf.memory_kib, "parallelism": kdf.parallelism},
            "he_params": he_params.as_dict(), "he": [], "signing": [], "issued": [], "revoked": [],
        }
        auth = cls(folder, meta, ca, kek, ca_key)
        write_new(folder / "ca.pem", cert_pem(ca).encode())
        auth._seal_file("ca.key.sealed", ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), new=True)
        auth._new_signing(now)
        auth._new_he(now, he_params)
        auth._write_crl(now)
        auth._save()
        return auth

    @classmethod
    def open(cls, folder: Path, passphrase: str) -> Authority:
        try:
            meta = json.loads((folder / "authority.json").read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            k = meta["kdf"]
            ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        except (OSError, ValueError, KeyError) as exc:
            raise ProvisioningError(f"{folder} is not a usable authority folder ({exc}). Fix: give the folder made by `mammo provision init`, or restore it from backup.") from None
        kek = _derive(passphrase, unb64(k["salt"]), KdfParams(k["time_cost"], k["memory_kib"], k["parallelism"]))
        auth = cls(folder, meta, ca, kek, ec.generate_private_key(ec.SECP256R1()))
        try:
            ca_key = serialization.load_der_private_key(auth._unseal_file("ca.key.sealed"), None)
        except ProvisioningError:
            raise ProvisioningError(f"Cannot unlock the authority in {folder}: wrong passphrase, or ca.key.sealed was damaged. Fix: give the right MAMMO_AUTHORITY_PASSPHRASE; nothing was changed.") from None
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError("ca.key.sealed holds no P-256 key. Fix: restore the authority folder from backup.")
        auth._ca_key = ca_key
        auth._check_mac()
        return auth

    # --- enrolment ----------------------------------------------------------
    def issue_kit(self, request_pem: bytes, *, coordinator: str | None = None, days: int = MAX_BOX_CERT_DAYS,
                  settings: dict[str, Any] | None = None, now: dt.datetime | None = None) -> bytes:
        """Certify a box's request and return its signed startup kit; the issue is recorded and the CRL re-signed."""
        now = now or utcnow()
        csr, box_id = read_request(request_pem)
        if coordinator is not None:
            _check_coordinator(coordinator)
        settings = dict(settings or {})
        try:
            check_kit_settings(settings)
        except MammoError as exc:
            raise ProvisioningError(f"Initial setting refused: {exc}") from None
        with self._update():
            revoked = [r for r in self.meta["revoked"] if r["box_id"] == box_id]
            if revoked:
                raise ProvisioningError(f"Box {box_id} was revoked on {revoked[0]['revoked_at']}; a revoked box is not enrolled again. Fix: enrol a replacement box (factory reset gives a new identity).")
            cert = issue_box_cert(csr, self.ca, self._ca_key, now, days)
            key = cert.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            he_entry = self._active("he")
            secret = self._unseal_file(f"he-v{he_entry['version']}.secret.sealed")
            payload = {
                "format": "mammo-kit/1", "box_id": box_id, "issued_at": iso(now), "authority": self.meta["name"],
                "certificate": cert_pem(cert), "ca_chain": [cert_pem(self.ca)], "coordinator": coordinator,
                "model_signing": [
                    {"version": s["version"], "status": s["status"], "verify_until": s.get("verify_until"),
                     "public_key": (self.folder / f"signing-v{s['version']}.pub.pem").read_text(encoding="ascii")}
                    for s in self.meta["signing"] if s["status"] == "active" or (s.get("verify_until") and dt.datetime.fromisoformat(s["verify_until"]) >= now)
                ],
                "he": {"version": he_entry["version"], "params": self.meta["he_params"], "sha256": he.sha256(secret),
                       "sealed": seal_for(key, secret, he_aad(box_id, he_entry["version"]))},
                "settings": settings,
            }
            kit = sign_kit(payload, self._ca_key)
            # The certificate itself is kept (under the metadata's MAC): the coordinator admits exactly these boxes' keys at its SuperLink.
            self.meta["issued"].append({"box_id": box_id, "serial": f"{cert.serial_number:x}", "issued_at": iso(now), "not_after": iso(cert.not_valid_after_utc),
                                        "certificate": cert_pem(cert)})
            self._write_crl(now)
        return kit

    def revoke(self, box_id: str, now: dt.datetime | None = None) -> list[str]:
        """Put every certificate issued to ``box_id`` on the CRL; returns their serials (hex)."""
        now = now or utcnow()
        with self._update():
            serials = [i["serial"] for i in self.meta["issued"] if i["box_id"] == box_id]
            if not serials:
                raise ProvisioningError(f"This authority never issued a certificate to box {box_id}. Fix: check the id with `mammo provision status` on the box.")
            done = {r["serial"] for r in self.meta["revoked"]}
            self.meta["revoked"] += [{"box_id": box_id, "serial": s, "revoked_at": iso(now)} for s in serials if s not in done]
            self._write_crl(now)
        return serials

    def refresh_crl(self, now: dt.datetime | None = None) -> None:
        with self._update():
            self._write_crl(now or utcnow())

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((self.folder / "crl.pem").read_bytes())

    def server_certificate(self, hosts: list[str], *, days: int = SERVER_CERT_DAYS, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
        """A TLS server certificate for the coordinator's SuperLink, issued by the federation CA: (certificate PEM, key PEM).

        Boxes verify the coordinator with the CA from their kit (``--root-certificates``), so no public CA is involved.
        The fresh P-256 key is returned, not kept here: the coordinator stores it 0600 in its own home."""
        now = now or utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.meta['name']} coordinator")]))
            .issuer_name(self.ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(min(now + dt.timedelta(days=days), self.ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return cert_pem(cert).encode(), key_pem

    # --- rotation and use -----------------------------------------------------
    def rotate(self, what: str, *, verify_days: int = DEFAULT_VERIFY_DAYS, now: dt.datetime | None = None) -> int:
        """New ``he`` or ``signing`` material as version N+1; the old one is retired, kept, and dated."""
        now = now or utcnow()
        if what not in ("he", "signing"):
            raise ProvisioningError(f"Cannot rotate {what!r}. Fix: give --what he or --what signing.")
        with self._update():
            old = self._active(what)
            old["status"], old["retired_at"] = "retired", iso(now)
            old["verify_until" if what == "signing" else "usable_until"] = iso(now + dt.timedelta(days=verify_days))
            return self._new_signing(now) if what == "signing" else self._new_he(now, he.HeParams.from_dict(self.meta["he_params"]))

    def sign(self, data: bytes) -> tuple[int, bytes]:
        """Sign a release manifest with the active model-signing key; returns (key version, signature)."""
        self._reload()
        version = int(self._active("signing")["version"])
        return version, self._signing_key(version).sign(data)

    def signing_key(self, version: int) -> Ed25519PrivateKey:
        """The private signing key of ``version``, refused once retired (retired keys never sign again)."""
        self._reload()
        entry = self._entry("signing", version)
        if entry["status"] != "active":
            raise ProvisioningError(f"Model-signing key v{version} was retired on {entry['retired_at']} and signs nothing new. Fix: sign with the active key (`Authority.sign`).")
        return self._signing_key(version)

    def he_public_context(self, version: int | None = None, now: dt.datetime | None = None) -> bytes:
        """The coordinator's public CKKS context; a retired version only until its ``usable_until`` (to finish old rounds)."""
        self._reload()
        entry = self._active("he") if version is None else self._entry("he", version)
        if entry["status"] != "active" and dt.datetime.fromisoformat(entry["usable_until"]) < (now or utcnow()):
            raise ProvisioningError(f"HE context v{entry['version']} was retired on {entry['retired_at']} and is past its usable-until date. Fix: use the active version.")
        return (self.folder / f"he-v{entry['version']}.public.tenseal").read_bytes()

    # --- internals --------------------------------------------------------------
    @contextlib.contextmanager
    def _update(self) -> Iterator[None]:
        """Read-modify-write authority.json under an exclusive lock on the folder, so two commands never lose each other's records."""
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._reload(locked=True)
            yield
            self._save()
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _reload(self, *, locked: bool = False) -> None:
        """Re-read the metadata: another command may have rotated or revoked since this one opened the authority."""
        fd = -1 if locked else os.open(self.folder, os.O_RDONLY)
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_SH)
            self.meta = json.loads((self.folder / "authority.json").read_text(encoding="utf-8"))
            self._check_mac()
        finally:
            if fd >= 0:
                os.close(fd)

    def _entry(self, what: str, version: int) -> dict[str, Any]:
        entries: list[dict[str, Any]] = self.meta[what]
        for e in entries:
            if e["version"] == version:
                return e  # the live entry: rotate updates it in place
        raise ProvisioningError(f"No {what} version {version} in this authority. Fix: list versions with `mammo provision status --authority DIR`.")

    def _active(self, what: str) -> dict[str, Any]:
        entry: dict[str, Any] = next(e for e in self.meta[what] if e["status"] == "active")
        return entry

    def _signing_key(self, version: int) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self._unseal_file(f"signing-v{version}.key.sealed"))

    def _new_signing(self, now: dt.datetime) -> int:
        version = 1 + max((e["version"] for e in self.meta["signing"]), default=0)
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        write_new(self.folder / f"signing-v{version}.pub.pem", pub)
        self._seal_file(f"signing-v{version}.key.sealed", key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()), new=True)
        self.meta["signing"].append({"version": version, "status": "active", "created_at": iso(now), "fingerprint": key_fingerprint(der)})
        return version

    def _new_he(self, now: dt.datetime, params: he.HeParams) -> int:
        version = 1 + max((e["version"] for e in self.meta["he"]), default=0)
        material = he.make_material(params)
        write_new(self.folder / f"he-v{version}.public.tenseal", material.public)
        self._seal_file(f"he-v{version}.secret.sealed", material.secret, new=True)
        self.meta["he"].append({"version": version, "status": "active", "created_at": iso(now), "secret_sha256": he.sha256(material.secret), "public_sha256": he.sha256(material.public)})
        return version

    def _write_crl(self, now: dt.datetime) -> None:
        revoked = [(int(r["serial"], 16), dt.datetime.fromisoformat(r["revoked_at"])) for r in self.meta["revoked"]]
        crl = build_crl(self.ca, self._ca_key, revoked, now)
        write_atomic(self.folder / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))

    def _save(self) -> None:
        self.meta["mac"] = self._mac(self.meta)
        write_atomic(self.folder / "authority.json", json.dumps(self.meta, indent=2).encode())

    def _mac(self, meta: dict[str, Any]) -> str:
        """HMAC of the metadata under the passphrase-derived key: the revoked and issued lists cannot be edited behind
        the operator's back (a box quietly dropped from the list would be un-revoked at the next CRL signing)."""
        body = json.dumps({k: v for k, v in meta.items() if k != "mac"}, sort_keys=True).encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mammo-authority/1 metadata mac").derive(self._kek)
        return hmac.new(key, body, "sha256").hexdigest()

    def _check_mac(self) -> None:
        if not hmac.compare_digest(str(self.meta.get("mac", "")), self._mac(self.meta)):
            raise ProvisioningError(f"{self.folder / 'authority.json'} was changed outside mammo (its issued or revoked lists cannot be trusted). "
                                    "Fix: restore the authority folder from backup; nothing was signed.")

    def _seal_file(self, name: str, data: bytes, *, new: bool) -> None:
        blob = seal(self._kek, data, aad=f"{FORMAT}:{name}".encode())
        (write_new if new else write_atomic)(self.folder / name, blob)

    def _unseal_file(self, name: str) -> bytes:
        try:
            return open_sealed(self._kek, (self.folder / name).read_bytes(), aad=f"{FORMAT}:{name}".encode())
        except (OSError, IntegrityError) as exc:
            raise ProvisioningError(f"Cannot open {name} in {self.folder} ({exc}). Fix: check the passphrase, or restore the authority folder from backup.") from None


def _derive(passphrase: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(passphrase.encode("utf-8"), salt, p.time_cost, p.memory_kib, p.parallelism, 32, Type.ID)


def _check_coordinator(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProvisioningError(f"Coordinator address {address!r} is not host:port. Fix: give e.g. --coordinator coordinator.example.org:9092.")
