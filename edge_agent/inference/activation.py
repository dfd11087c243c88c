"""Which model the box screens with: signed releases, atomic activation, rollback.

A release is a folder (``models/release/<version>`` shipped with the box, or
``$MAMMO_HOME/models/<version>`` received from the coordinator) with a
``manifest.json`` of SHA-256s and a ``manifest.sig``: the base64 Ed25519
signature of the manifest's exact bytes.  Whose signature counts depends on
the box (:class:`ReleaseTrust`)::

    enrolled box   (a startup kit is installed)   its federation's model-signing key:
                                                  the active one, or a retired one until its verify-until date
    unenrolled box (demo mode)                    the project release key pinned in the software
                                                  (models/release/PINNED_RELEASE_KEYS.pem): only the
                                                  releases shipped with the software run

    this box's own adaptation                     the box's local release key (derived from its keystore,
    (``model.json["local"]``)                     never stored) -- and only when the release it was
                                                  derived from is one this box trusts by the rows above,
                                                  unchanged, and the evaluation gate said "serve"

There is no "no key, no check": an unsigned release is refused everywhere.
Activation verifies the files and the signature, runs the release's bundled
self-test on the runtime of the box's active hardware profile (opened exactly
as the inference service opens it, so TFLite, NPU and CUDA paths are tested
too), and only then appends a row to ``model_activations`` and the audit
trail in one transaction, so it is atomic; workers pick the new model up at
their next study (a study in flight finishes on the old one).  Anything that
fails leaves the previous model active.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent import audit
from edge_agent.errors import ModelError, ProvisioningError
from edge_agent.settings import Settings
from edge_agent.store import transaction
from hardware_profiles.profiles import PROFILE_DIR, Profile
from models.errors import ReleaseError
from models.release_files import Release, load_release
from models.selftest import SELFTEST_FILE  # built with the release (models.selftest.build_selftest), replayed here
from provisioning.kit import SigningKey

if TYPE_CHECKING:
    from models.runtime import Screener
    from provisioning.keystore import Keystore

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "models" / "release"
PINNED_KEYS_FILE = SHIPPED_DIR / "PINNED_RELEASE_KEYS.pem"
SIGNATURE_FILE = "manifest.sig"
LOCAL = "local"  # model.json key of a release this box derived from its own gate-approved adaptation (edge_agent.learning.serve)
LOCAL_KEY_PURPOSE = "local-release-signing"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    source: str  # shipped | installed | local (this box's own adaptation)
    active: bool


@dataclass(frozen=True)
class Activation:
    id: int
    version: str
    path: Path
    manifest_sha256: str
    activated_at: float
    activated_by: str
    reason: str
    selftest: dict[str, Any]

    @property
    def generation(self) -> str:
        """The release this model's privacy ledger, updates and coordinator answers belong to: itself, or, for the box's own
        adaptation, the release it was adapted from (local adaptation does not start a new model generation)."""
        return federation_version(self.path, self.version)


def _sort_key(p: Path) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))


# --- whose signature counts -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseTrust:
    """The keys a box accepts on a release: its federation's when enrolled, else only the project's pinned key (demo mode)."""

    federation_keys: tuple[SigningKey, ...]
    pinned_keys: tuple[Ed25519PublicKey, ...]

    @property
    def enrolled(self) -> bool:
        return bool(self.federation_keys)

    @property
    def mode(self) -> str:
        return "federation" if self.enrolled else "demo"


def load_pinned_keys(path: Path = PINNED_KEYS_FILE) -> tuple[Ed25519PublicKey, ...]:
    """The project's release keys pinned in the software (one or more PEM blocks; comment lines are ignored)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeError) as exc:
        raise ModelError(f"The pinned release key file {path} is unreadable ({exc}); no release can be trusted. Fix: reinstall the box software.") from exc
    keys = []
    for block in text.split("-----END PUBLIC KEY-----")[:-1]:
        pem = block[block.index("-----BEGIN PUBLIC KEY-----"):] + "-----END PUBLIC KEY-----\n"
        key = serialization.load_pem_public_key(pem.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise ModelError(f"{path} pins a key that is not Ed25519. Fix: reinstall the box software.")
        keys.append(key)
    if not keys:
        raise ModelError(f"{path} pins no release key; no release can be trusted. Fix: reinstall the box software.")
    return tuple(keys)


def trust_of(settings: Settings, pinned_keys: Path = PINNED_KEYS_FILE) -> ReleaseTrust:
    """Read the box's trust from its installed startup kit (a damaged kit raises: fail closed, never fall back to demo)."""
    from provisioning import enrolment

    try:
        federation = enrolment.model_signing_keys(enrolment.folder_of(settings))
    except ProvisioningError as exc:
        raise ModelError(f"No model can be verified: {exc}") from exc
    return ReleaseTrust(federation, () if federation else load_pinned_keys(pinned_keys))


def check_signature(trust: ReleaseTrust, manifest: bytes, signature_b64: bytes | None, version: str, now: dt.datetime) -> str:
    """Who signed ``manifest`` among the keys ``trust`` accepts (e.g. "federation key v2"); ModelError saying why not otherwise."""
    if signature_b64 is None:
        if trust.enrolled:
            raise ModelError(f"Model release {version} is not signed (no {SIGNATURE_FILE}); this box activates only releases signed by its "
                             "federation's model-signing key. Fix: have the authority sign it (`python scripts/sign_release.py DIR --authority AUTH`).")
        raise ModelError(f"Model release {version} is not signed (no {SIGNATURE_FILE}). This box is not enrolled (demo mode) and runs only the "
                         "releases shipped with the software, signed by the project release key. Fix: enrol the box (`mammo provision install KIT`) "
                         "and use releases signed by your federation, or activate a shipped release (`mammo model list`).")
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if trust.enrolled:
        try:
            key_version = _federation_verify(trust.federation_keys, signature, manifest, now)
        except ProvisioningError as exc:
            raise ModelError(f"Model release {version} refused: {exc} It was altered, or signed by someone else (the shipped releases "
                             "are signed by the project, not by your federation); it was not activated.") from exc
        return f"federation key v{key_version}"
    for i, key in enumerate(trust.pinned_keys, 1):
        try:
            key.verify(signature, manifest)
        except InvalidSignature:
            continue
        return f"project release key {i}"
    raise ModelError(f"Model release {version}: {SIGNATURE_FILE} does not verify with the project release key pinned in this software. "
                     "This box is not enrolled (demo mode) and runs only the releases shipped with the software; the release was altered "
                     "or comes from elsewhere. Fix: use a shipped release, or enrol the box and install releases signed by your federation.")


def _federation_verify(keys: tuple[SigningKey, ...], signature: bytes, data: bytes, now: dt.datetime) -> int:
    from provisioning.kit import verify_release as verify_signed

    return verify_signed(keys, signature, data, now)


def verify_release_signed(path: Path, trust: ReleaseTrust, now: dt.datetime | None = None) -> tuple[Release, str, str]:
    """Load a release after checking every file's SHA-256 and its signature; (release, manifest SHA-256, signer)."""
    try:
        release = load_release(path, verify=True)
    except ReleaseError as exc:
        raise ModelError(f"Model release {path} refused: {exc}") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"Model release {path} is unreadable ({exc}); reinstall it.") from exc
    manifest = (path / "manifest.json").read_bytes()
    sig_path = path / SIGNATURE_FILE
    signature = sig_path.read_bytes() if sig_path.exists() else None
    signer = check_signature(trust, manifest, signature, release.version, now or dt.datetime.now(dt.UTC))
    return release, hashlib.sha256(manifest).hexdigest(), signer


def verify_release(path: Path, trust: ReleaseTrust, now: dt.datetime | None = None) -> tuple[Release, str]:
    """Load a release that this box may run: (release, manifest SHA-256); ModelError saying why not otherwise."""
    release, digest, _ = verify_release_signed(path, trust, now)
    return release, digest


def sign_release(folder: Path, key: Ed25519PrivateKey) -> Path:
    """Write ``manifest.sig`` for a release folder whose files match its manifest (signing a broken release is refused)."""
    folder = Path(folder)
    try:
        load_release(folder, verify=True)
    except ReleaseError as exc:
        raise ModelError(f"Not signing {folder}: {exc}") from exc
    out = folder / SIGNATURE_FILE
    tmp = out.with_name(SIGNATURE_FILE + ".tmp")
    tmp.write_text(base64.b64encode(key.sign((folder / "manifest.json").read_bytes())).decode("ascii") + "\n", encoding="ascii")
    os.replace(tmp, out)
    return out


def local_release_key(keystore: Keystore) -> Ed25519PrivateKey:
    """The box's own release key: derived from its keystore's master key, so it exists on this box only and is never stored.

    It signs nothing but this box's gate-approved adaptations of a release the
    box already trusts (see ``ModelRegistry``); no other box trusts it.
    """
    return Ed25519PrivateKey.from_private_bytes(keystore.secret(LOCAL_KEY_PURPOSE))


def _info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads((path / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_local(path: Path) -> bool:
    """Whether the release folder is this box's own adaptation (its files are verified later, with its signature)."""
    return isinstance(_info(path).get(LOCAL), dict)


def federation_version(path: Path, version: str) -> str:
    """The release a box reports to its coordinator: for its own adaptation, the release that adaptation was derived from."""
    local = _info(path).get(LOCAL)
    return str(local.get("base_version", version)) if isinstance(local, dict) else version


# --- the self-test, on the box's own runtime --------------------------------------------------------


@dataclass(frozen=True)
class SelftestRuntime:
    """Where a self-test runs: a hardware profile opened by ``hardware_profiles.runtime.open_on_profile`` (what the
    inference service screens with), or a fixed backend for tools such as ``mammo eval`` (``profiles`` empty)."""

    profile: Profile
    profiles: dict[str, Profile]
    delegate: str | None = None

    @classmethod
    def fixed(cls, backend: str, threads: int) -> SelftestRuntime:
        litert = backend.startswith("tflite")
        return cls(Profile(f"fixed:{backend}", "a fixed backend chosen by the caller", 0, "litert" if litert else "onnxruntime", backend,
                           threads, 1, "INT8", 1, 1, 1, () if litert else ("CPUExecutionProvider",)), {})

    def open(self, release: Release) -> tuple[Screener, str, str | None]:
        """The screener this box would score with: (screener, backend, fallback reason or None).

        A profile whose accelerator fails (a delegate or provider that does not load) falls back to the CPU exactly as
        the inference service does, and the self-test runs there; but the release's own model for the profile's
        backend must still load on the plain CPU, or the release is broken (a bad TFLite file) and refused."""
        from hardware_profiles.runtime import open_on_profile
        from models.runtime import Screener

        def refuse(exc: Exception) -> ModelError:
            return ModelError(f"Self-test of {release.version}: its {self.profile.backend} model does not load for hardware profile "
                              f"{self.profile.name} ({type(exc).__name__}: {exc}). Activation refused; the previous model stays active. "
                              "Fix: rebuild or reinstall the release.")

        try:
            if not self.profiles:
                return Screener(release, backend=self.profile.backend, threads=self.profile.threads), self.profile.backend, None
            opened = open_on_profile(release, self.profile, self.profiles, self.delegate)
        except Exception as exc:  # a runtime's own error (onnxruntime, LiteRT): the release does not run here
            raise refuse(exc) from exc
        if opened.fallback_reason is not None:  # the accelerator's fault, or the release's? load its model form on the CPU
            try:
                Screener(release, backend=self.profile.backend, threads=1)
            except Exception as exc:
                raise refuse(exc) from exc
        return cast("Screener", opened.screener), opened.backend, opened.fallback_reason


def box_runtime(settings: Settings, profiles_dir: Path = PROFILE_DIR) -> SelftestRuntime:
    """The box's active hardware profile, chosen as the inference service chooses it (``infer_profile`` forces one)."""
    from hardware_profiles.detect import detect
    from hardware_profiles.profiles import load_profiles
    from hardware_profiles.select import choose

    profiles = load_profiles(profiles_dir)
    facts = detect(tuple(n for p in profiles.values() for n in p.delegates), settings.infer_tflite_delegate)
    try:
        choice = choose(profiles, facts, settings.infer_profile)
    except KeyError as exc:
        raise ModelError(f"{exc.args[0]}. Fix: set infer_profile to one of them, or unset it.") from exc
    return SelftestRuntime(choice.profile, profiles, facts.delegates[0][1] if facts.delegates else None)


def run_selftest(release: Release, runtime: SelftestRuntime, tolerance: float) -> dict[str, Any]:
    """Run the release's bundled reference images through this box's runtime; compare with the shipped answers."""
    path = release.path / SELFTEST_FILE
    if not path.exists():
        raise ModelError(f"Model release {release.version} has no {SELFTEST_FILE}; a release without a self-test is not activated.")
    with np.load(path) as ref:
        images, exp_a, exp_m = ref["images"], ref["expected_p_abnormal"], ref["expected_p_malignant"]
    screener, backend, fallback = runtime.open(release)
    where = f"{backend} (profile {runtime.profile.name}{', fallen back to the CPU' if fallback else ''})"
    diffs = []
    for img, ea, em in zip(images, exp_a, exp_m, strict=True):
        try:
            r = screener.score(img)
        except Exception as exc:  # the runtime failed mid-run: same as a model that does not load
            raise ModelError(f"Self-test of {release.version} on {where} failed to run ({type(exc).__name__}: {exc}). Activation refused.") from exc
        if not (np.isfinite(r.p_abnormal) and np.isfinite(r.p_malignant) and np.all(np.isfinite(r.heatmap))):
            raise ModelError(f"Self-test of {release.version} on {where}: the model produced NaN/inf. Activation refused.")
        diffs.append(max(abs(r.p_abnormal - ea), abs(r.p_malignant - em)))
    diff = float(max(diffs))
    result = {"backend": backend, "profile": runtime.profile.name, "threads": runtime.profile.threads, "fallback_reason": fallback,
              "images": int(len(images)), "max_prob_diff": round(diff, 5), "tolerance": tolerance, "passed": diff <= tolerance}
    if not result["passed"]:
        raise ModelError(f"Self-test of {release.version} on {where} failed: outputs differ from the reference by {diff:.3f} (> {tolerance}). "
                         "Activation refused; the previous model stays active.")
    return result


# --- the registry: activation, history, rollback ---------------------------------------------------


class ModelRegistry:
    """The box's releases and activations.  ``pinned_keys``, ``profiles_dir`` and ``clock`` are the package's and the real
    ones in the box; tests pass their own (another pinned key, a TFLite profile, a later date) instead of patching."""

    def __init__(self, db: sqlite_utils.Database, settings: Settings, shipped_dir: Path = SHIPPED_DIR, *,
                 pinned_keys: Path = PINNED_KEYS_FILE, profiles_dir: Path = PROFILE_DIR, clock: Callable[[], float] = time.time,
                 keystore: Keystore | None = None) -> None:
        """``keystore``: the box's unlocked keystore, needed only to verify (or run) the box's own adapted releases."""
        self.db = db
        self.settings = settings
        self.shipped_dir = shipped_dir
        self.pinned_keys = pinned_keys
        self.profiles_dir = profiles_dir
        self.clock = clock
        self.local_key = local_release_key(keystore).public_key() if keystore is not None else None

    def trust(self) -> ReleaseTrust:
        """Read at each use: enrolling the box (installing a kit) changes it while the daemon runs."""
        return trust_of(self.settings, self.pinned_keys)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def verify(self, path: Path) -> tuple[Release, str]:
        """A release this box may run now (files, then the signature its trust requires)."""
        release, digest, _ = self.verify_signed(path, self.trust())
        return release, digest

    def verify_signed(self, path: Path, trust: ReleaseTrust) -> tuple[Release, str, str]:
        """(release, manifest SHA-256, signer) of a release this box may run now; ModelError saying why not otherwise."""
        if is_local(path):
            return self._verify_local(path, trust)
        return verify_release_signed(path, trust, self.now())

    def _verify_local(self, path: Path, trust: ReleaseTrust) -> tuple[Release, str, str]:
        """The box's own adaptation: its key's signature, a base this box trusts now and unchanged, and the gate's "serve"."""
        try:
            release = load_release(path, verify=True)
        except (ReleaseError, OSError, ValueError, KeyError) as exc:
            raise ModelError(f"Locally adapted model {path.name} refused: {exc}") from exc
        if self.local_key is None:
            raise ModelError(f"{release.version} is this box's own adapted model; only the box that made it can verify it, with its keystore "
                             "unlocked. Fix: run this through the box's own commands (`mammo model ...`), or activate a signed release.")
        manifest = (path / "manifest.json").read_bytes()
        sig_path = path / SIGNATURE_FILE
        try:
            self.local_key.verify(base64.b64decode(sig_path.read_bytes().strip(), validate=True) if sig_path.exists() else b"", manifest)
        except (InvalidSignature, binascii.Error, ValueError):
            raise ModelError(f"Locally adapted model {release.version} refused: its signature does not verify with this box's local release "
                             "key (it was altered, or made on another box). Fix: activate a signed release (`mammo model list`).") from None
        local = release.info[LOCAL]
        gate = local.get("gate") or {}
        if gate.get("decision") != "serve":
            raise ModelError(f"Locally adapted model {release.version} refused: the evaluation gate did not approve it ({gate.get('reason', 'no gate record')}).")
        base_version, base_digest = str(local.get("base_version", "")), str(local.get("base_manifest_sha256", ""))
        bases = [r.path for r in self.releases() if r.version == base_version and r.source != "local"]
        if not bases:
            raise ModelError(f"Locally adapted model {release.version} refused: the release it was adapted from ({base_version}) is no longer on "
                             "this box. Fix: activate a signed release (`mammo model list`).")
        reasons = []
        for base in bases:
            try:
                _, digest, signer = verify_release_signed(base, trust, self.now())
            except ModelError as exc:
                reasons.append(str(exc))
                continue
            if digest == base_digest:
                return release, hashlib.sha256(manifest).hexdigest(), f"this box's local key (adapted from {base_version}, {signer})"
            reasons.append(f"{base} has changed since the adaptation was made (manifest {digest[:12]} != {base_digest[:12]})")
        raise ModelError(f"Locally adapted model {release.version} refused: the release it was adapted from is not one this box trusts now: "
                         + " | ".join(reasons))

    def releases(self) -> list[ModelVersion]:
        active = self.active()
        out = []
        for source, root in (("shipped", self.shipped_dir), ("installed", self.settings.models_dir)):
            if not root.is_dir():
                continue
            for p in sorted((p for p in root.iterdir() if (p / "manifest.json").exists()), key=_sort_key):
                out.append(ModelVersion(p.name, p, "local" if source == "installed" and is_local(p) else source, active is not None and active.path == p))
        return out

    def find(self, version_or_path: str) -> Path:
        p = Path(version_or_path)
        if p.is_dir():
            return p.resolve()
        for r in reversed(self.releases()):
            if r.version == version_or_path:
                return r.path
        raise ModelError(f"No model release {version_or_path!r}. Fix: pick one from `mammo model list`.")

    def history(self) -> list[Activation]:
        rows = self.db.execute(
            "SELECT id, version, path, manifest_sha256, activated_at, activated_by, reason, selftest FROM model_activations ORDER BY id"
        ).fetchall()
        return [Activation(r[0], r[1], Path(r[2]), r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]

    def active(self) -> Activation | None:
        h = self.history()
        return h[-1] if h else None

    def selftest_runtime(self, backend: str | None = None, threads: int | None = None) -> SelftestRuntime:
        if backend is not None:
            return SelftestRuntime.fixed(backend, threads or 1)
        return box_runtime(self.settings, self.profiles_dir)

    def activate(self, version_or_path: str, *, by: str, reason: str, backend: str | None = None, threads: int | None = None) -> Activation:
        """Verify, self-test on the active hardware profile (or on ``backend`` when a tool names one), then activate."""
        path = self.find(version_or_path)
        trust = self.trust()
        release, digest, signer = self.verify_signed(path, trust)
        selftest = run_selftest(release, self.selftest_runtime(backend, threads), self.settings.infer_selftest_tolerance)
        selftest["signed_by"] = signer
        now = time.time()
        with transaction(self.db) as db:
            cur = db.execute(
                "INSERT INTO model_activations (version, path, manifest_sha256, activated_at, activated_by, reason, selftest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [release.version, str(path), digest, now, by, reason, json.dumps(selftest)],
            )
            audit.append(db, by, "model_activate", release.version,
                         {"reason": reason, "manifest_sha256": digest, "path": str(path), "signed_by": signer, "trust": trust.mode,
                          "profile": selftest["profile"], "backend": selftest["backend"]}, at=now)
        log.info("model %s activated by %s (%s; %s, self-test on %s)", release.version, by, reason, signer, selftest["backend"])
        return Activation(cast(int, cur.lastrowid), release.version, path, digest, now, by, reason, selftest)

    def rollback(self, *, by: str, backend: str | None = None, threads: int | None = None) -> Activation:
        """Re-activate the model that was active before the current one (verified and self-tested again)."""
        h = self.history()
        if len(h) < 2:
            raise ModelError("There is no earlier model to roll back to.")
        current = h[-1]
        for previous in reversed(h[:-1]):
            if previous.path != current.path:
                return self.activate(str(previous.path), by=by, reason=f"rollback from {current.version}", backend=backend, threads=threads)
        raise ModelError("Every earlier activation is the current model; nothing to roll back to.")

    def ensure_active(self, *, backend: str | None = None, threads: int | None = None) -> Activation:
        """On first start, activate the newest release this box trusts: installed ones first, then the shipped ones.

        A folder it does not trust (an unsigned release under development, a
        shipped release on an enrolled box) is skipped with a logged reason.
        """
        current = self.active()
        if current is not None:
            return current
        candidates = [r for r in reversed(self.releases()) if r.source == "installed"] + [r for r in reversed(self.releases()) if r.source == "shipped"]
        # (never the box's own adaptation at first start: it serves only on the gate's word, right after its round)
        if not candidates:
            raise ModelError(f"No model release is shipped under {self.shipped_dir}; the box cannot screen. Reinstall the box software.")
        refused = []
        for r in candidates:
            try:
                return self.activate(str(r.path), by="system", reason="first start", backend=backend, threads=threads)
            except ModelError as exc:
                log.warning("release %s (%s) skipped at first start: %s", r.version, r.source, exc)
                refused.append(f"{r.version} ({r.source}): {exc}")
        raise ModelError("No model release this box trusts could be activated; the box cannot screen until one is. " + " | ".join(refused))
