"""The TPM 2.0 protector: the keystore's KEK sealed to this machine's TPM.

The KEK becomes a sealed data object (a keyedhash with ``fixedTPM`` and
``fixedParent``) under the TPM's storage root key; the SRK is recreated
from the owner hierarchy's seed with the standard ECC P-256 template each
time, so nothing is persisted in the TPM and the sealed blobs live in the
keystore file.  Those blobs are encrypted by the SRK, which never leaves the
chip: a copied disk, or the same disk in another machine, cannot unseal
them.  Optionally the object is bound to PCR values (``sha256:0,2,4,7``):
a changed firmware or boot chain then refuses to unseal, and the box falls
back to its passphrase.

``tpm2-pytss`` (and Debian's ``libtss2``) are optional: :func:`unavailable`
says what is missing, and the box runs with the passphrase protector alone.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from edge_agent.errors import KeystoreError
from provisioning.protectors import b64, unb64

DEFAULT_DEVICES = ("/dev/tpmrm0", "/dev/tpm0")


def unavailable(tcti: str | None = None) -> str | None:
    """Why no TPM can be used here (None when one can): the missing library, or no TPM device and no TCTI given."""
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "the Python package tpm2-pytss is not installed (pip install tpm2-pytss; needs Debian's libtss2-dev)"
    try:
        import tpm2_pytss  # noqa: F401  (loads libtss2 too)
    except (ImportError, OSError) as exc:
        return f"tpm2-pytss cannot load libtss2 ({exc}); apt-get install libtss2-dev"
    if tcti is None and not any(os.path.exists(d) for d in DEFAULT_DEVICES):
        return f"this machine has no TPM device ({', '.join(DEFAULT_DEVICES)})"
    return None


def _split_tcti(tcti: str | None) -> tuple[str | None, str | None]:
    if not tcti:
        path = next((d for d in DEFAULT_DEVICES if os.path.exists(d)), DEFAULT_DEVICES[0])
        return "device", path
    name, _, conf = tcti.partition(":")
    return name, conf or None


@contextmanager
def _esapi(tcti: str | None) -> Iterator[Any]:
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception

    name, conf = _split_tcti(tcti)
    try:
        ctx = ESAPI(TCTILdr(name, conf))
    except TSS2_Exception as exc:
        raise KeystoreError(f"cannot reach the TPM at {name}:{conf or ''} ({exc})") from None
    try:
        yield ctx
    finally:
        ctx.close()


def _srk(ctx: Any) -> Any:
    """The storage root key: the same ECC P-256 primary every time, from the owner seed (as tpm2-tools' default)."""
    from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE

    handle, *_ = ctx.create_primary(TPM2B_SENSITIVE_CREATE(), "ecc256:aes128cfb")
    return handle


def _policy_pcr(ctx: Any, pcrs: str, trial: bool) -> tuple[Any, bytes]:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPM2B_DIGEST, TPML_PCR_SELECTION, TPMT_SYM_DEF

    session = ctx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL if trial else TPM2_SE.POLICY,
                                     TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    ctx.policy_pcr(session, TPM2B_DIGEST(), TPML_PCR_SELECTION.parse(pcrs))
    return session, bytes(ctx.policy_get_digest(session))


class TpmProtector:
    """Seals the KEK to a TPM reached through ``tcti`` (``device:/dev/tpmrm0``, ``swtpm:host=…,port=…``; None = this machine's)."""

    kind = "tpm2"

    def __init__(self, tcti: str | None = None, pcrs: str = "") -> None:
        self.tcti = tcti
        self.pcrs = pcrs

    def wrap(self, kek: bytes, aad: bytes) -> dict[str, Any]:
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import TPMA_OBJECT
        from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPMS_SENSITIVE_CREATE, TPMT_PUBLIC

        attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
        try:
            with _esapi(self.tcti) as ctx:
                srk = _srk(ctx)
                policy = b""
                if self.pcrs:
                    session, policy = _policy_pcr(ctx, self.pcrs, trial=True)
                    ctx.flush_context(session)
                else:
                    attrs |= TPMA_OBJECT.USERWITHAUTH
                template = TPM2B_PUBLIC(TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs, authPolicy=policy or None))
                sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(kek)))
                private, public, *_ = ctx.create(srk, sensitive, template)
                ctx.flush_context(srk)
        except TSS2_Exception as exc:
            raise KeystoreError(f"the TPM refused to seal the key ({exc})") from None
        return {"kind": self.kind, "public": b64(public.marshal()), "private": b64(private.marshal()), "pcrs": self.pcrs,
                "parent": "owner/ecc256:aes128cfb"}

    def unwrap(self, record: Mapping[str, Any], aad: bytes) -> bytes:
        reason = unavailable(self.tcti)
        if reason:
            raise KeystoreError(reason)
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC

        try:
            public, _ = TPM2B_PUBLIC.unmarshal(unb64(record["public"]))
            private, _ = TPM2B_PRIVATE.unmarshal(unb64(record["private"]))
            pcrs = str(record.get("pcrs") or "")
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreError(f"the TPM record is damaged ({exc})") from None
        try:
            with _esapi(self.tcti) as ctx:
                srk = _srk(ctx)
                try:
                    obj = ctx.load(srk, private, public)
                except TSS2_Exception:
                    raise KeystoreError("this TPM did not seal the key (another machine, or its TPM was cleared or replaced)") from None
                finally:
                    ctx.flush_context(srk)
                try:
                    if pcrs:
                        session, _ = _policy_pcr(ctx, pcrs, trial=False)
                        try:
                            return bytes(ctx.unseal(obj, session1=session))
                        finally:
                            ctx.flush_context(session)
                    return bytes(ctx.unseal(obj))
                except TSS2_Exception:
                    raise KeystoreError(f"the TPM refused to unseal: PCRs {pcrs} changed (firmware, boot loader or kernel updated?)") from None
                finally:
                    ctx.flush_context(obj)
        except TSS2_Exception as exc:
            raise KeystoreError(f"the TPM failed ({exc})") from None
