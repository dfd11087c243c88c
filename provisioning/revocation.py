"""Revocation: the CA-signed list of withdrawn box certificates, and the check the coordinator runs at connection.

``check_peer`` is a pure function of the presented certificate, the CA, the
current CRL and the time, so the coordinator's connection handler stays a thin
shell around it.  It fails closed: a CRL that is not the CA's, or that has
passed its ``next_update``, refuses every peer until the authority publishes a
fresh one (``mammo provision revoke`` and ``issue`` both re-sign it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agent.errors import PeerRefused
from provisioning.pki import box_id_of, signed_by

CRL_DAYS = 30


def build_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, revoked: Iterable[tuple[int, dt.datetime]], now: dt.datetime, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    """A CRL listing ``(serial, revoked_at)`` pairs, valid for ``days``."""
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now).next_update(now + dt.timedelta(days=days))
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca_key, hashes.SHA256())


def check_peer(cert_pem: bytes, ca: x509.Certificate, crl: x509.CertificateRevocationList, now: dt.datetime) -> None:
    """Raise PeerRefused unless ``cert_pem`` is a current, unrevoked box certificate of this federation."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise PeerRefused("The peer sent no readable certificate. Fix: enrol the box with a startup kit (`mammo provision install`).") from None
    crl_next = crl.next_update_utc
    ca_key = ca.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(ca_key) or crl.issuer != ca.subject:
        raise PeerRefused("The revocation list is not signed by this federation's CA, so no box can be trusted. Fix: copy crl.pem from the authority folder again.")
    if crl_next is None or now > crl_next:
        raise PeerRefused(f"The revocation list expired on {crl_next}; every box is refused until it is renewed. Fix: run `mammo provision crl --authority DIR` and copy crl.pem to the coordinator.")
    if not signed_by(cert, ca):
        raise PeerRefused("The box certificate is not issued by this federation's CA (another authority). Fix: enrol the box with a kit from this federation.")
    box_id = box_id_of(cert.subject)
    if now < cert.not_valid_before_utc:
        raise PeerRefused(f"Box {box_id}: certificate valid only from {cert.not_valid_before_utc.isoformat()}; the clock of the coordinator or the authority is off. Fix: set the clocks right.")
    if now > cert.not_valid_after_utc:
        raise PeerRefused(f"Box {box_id}: certificate expired on {cert.not_valid_after_utc.isoformat()}. Fix: renew it with a new startup kit (`mammo provision issue`, then `install` on the box).")
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        raise PeerRefused(f"Box {box_id}: certificate {cert.serial_number:x} was revoked on {entry.revocation_date_utc.isoformat()}. A revoked box is not re-admitted; enrol a replacement box.")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PeerRefused(f"Box {box_id}: the certificate is not a box (client) certificate. Fix: enrol the box with a startup kit.")
