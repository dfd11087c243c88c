"""X.509 for the federation: the CA, box requests and certificates, fingerprints.

Pure functions of keys, names and a clock; files and passphrases live in
``authority`` and ``enrolment``.  Box keys are ECDSA P-256 because Flower's
SuperNode authentication and TLS both take P-256 (SECP256R1) keys, so the
same key can later open the box's connection to the coordinator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.errors import ProvisioningError

MAX_BOX_CERT_DAYS = 30
CA_DAYS = 3650
# A certificate starts a little before it is issued, so a box whose clock is a few minutes behind can still use it.
BACKDATE = dt.timedelta(minutes=5)
BOX_ORG = "MammoAI-TR Edge box"


def new_box_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_der(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: what a person compares when pinning the authority."""
    return cert.fingerprint(hashes.SHA256()).hex()


def key_fingerprint(spki_der: bytes) -> str:
    return hashlib.sha256(spki_der).hexdigest()


def make_ca(key: ec.EllipticCurvePrivateKey, name: str, now: dt.datetime, days: int = CA_DAYS) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def make_csr(key: ec.EllipticCurvePrivateKey, box_id: str) -> x509.CertificateSigningRequest:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id), x509.NameAttribute(NameOID.ORGANIZATION_NAME, BOX_ORG)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def box_id_of(name: x509.Name) -> str:
    """The box id a request or certificate names (its CN, a UUID as the keystore makes it)."""
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    raw = cns[0].value if len(cns) == 1 else None
    if not isinstance(raw, str):
        raise ProvisioningError("The request or certificate names no single box id (CN). Fix: make the request again with `mammo provision request` on the box.")
    try:
        if str(uuid.UUID(raw)) != raw:
            raise ValueError(raw)
    except ValueError:
        raise ProvisioningError(f"{raw!r} is not a box id (a UUID). Fix: make the request again with `mammo provision request` on the box.") from None
    return raw


def read_request(pem: bytes) -> tuple[x509.CertificateSigningRequest, str]:
    """Parse and check a box's request: well-formed, signed by its own key (proof of possession), P-256, names a box."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise ProvisioningError("The request file is not a certificate request (PEM CSR). Fix: copy the file `mammo provision request` wrote, unchanged.") from None
    if not csr.is_signature_valid:
        raise ProvisioningError("The request's signature does not verify: it was altered after the box made it. Fix: make the request again on the box.")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ProvisioningError("The request's key is not ECDSA P-256, which the federation's connections need. Fix: make the request with `mammo provision request`.")
    return csr, box_id_of(csr.subject)


def issue_box_cert(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    if not 1 <= days <= MAX_BOX_CERT_DAYS:
        raise ProvisioningError(f"A box certificate may live 1 to {MAX_BOX_CERT_DAYS} days, not {days}. Fix: give --days {MAX_BOX_CERT_DAYS} or less; renew with a new kit.")
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    box_id = box_id_of(csr.subject)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=True,
                          key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:mammo:box:{box_id}")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
