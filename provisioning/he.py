"""The federation's homomorphic-encryption material (TenSEAL CKKS).

Clinic boxes encrypt their model updates with one shared CKKS context and the
coordinator adds the ciphertexts without ever being able to read them, so the
secret key goes only to clinic boxes (inside their startup kits) and the
coordinator gets a *public* context: same parameters and public key, no
secret key.  Sums need no Galois or relinearisation keys, which keeps the
public context at ~0.36 MB (see STACK-NOTES, TenSEAL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.errors import ProvisioningError

if TYPE_CHECKING:  # tenseal costs ~0.2 s to import: every `mammo` command would pay it
    import tenseal as ts


@dataclass(frozen=True)
class HeParams:
    """CKKS parameters: N=8192, [60, 40, 60], scale 2^40 suit packed ``ckks_vector`` sums (error ~4e-8)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    global_scale_bits: int = 40

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeParams:
        return cls(int(d["poly_modulus_degree"]), tuple(int(b) for b in d["coeff_mod_bit_sizes"]), int(d["global_scale_bits"]))

    def as_dict(self) -> dict[str, Any]:
        return {"poly_modulus_degree": self.poly_modulus_degree, "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "global_scale_bits": self.global_scale_bits}


@dataclass(frozen=True)
class HeMaterial:
    """One version's two serialised contexts: ``secret`` for clinics, ``public`` for the coordinator."""

    secret: bytes
    public: bytes


def make_material(params: HeParams = HeParams()) -> HeMaterial:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0**params.global_scale_bits
    secret = ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    ctx.make_context_public()
    public = ctx.serialize(save_galois_keys=False, save_relin_keys=False)
    return HeMaterial(secret=secret, public=public)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_context(data: bytes, *, need_secret: bool) -> ts.Context:
    """Deserialise a context, refusing one that lacks the secret key when a clinic's is expected."""
    import tenseal as ts

    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError from C++
        raise ProvisioningError(f"The HE context cannot be read ({exc}). Fix: ask the authority for a new startup kit.") from None
    if need_secret and not ctx.is_private():
        raise ProvisioningError("The HE context has no secret key, so this box could not decrypt aggregates. Fix: ask the authority for a new startup kit.")
    return ctx
