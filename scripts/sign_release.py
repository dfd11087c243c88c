"""Sign a model release's manifest.json (writes RELEASE_DIR/manifest.sig).

    python scripts/sign_release.py models/release/0.2.0                 # the project release key (shipped releases)
    python scripts/sign_release.py RELEASE_DIR --key PATH               # that key instead
    python scripts/sign_release.py RELEASE_DIR --authority /media/auth  # the federation's active model-signing key
    python scripts/sign_release.py --new-key PATH                       # make a new project key (a lost key's replacement)

The project release key signs the releases shipped with the software; an
unenrolled box trusts only its public half, pinned in
models/release/PINNED_RELEASE_KEYS.pem. The private key lives with the release
manager, offline, never in the repository: by default
``$MAMMO_RELEASE_SIGNING_KEY``, else ``.mammo-release-signing/key.pem`` next to
the checkout. An enrolled box trusts only its federation's key, so a release
for it is signed with ``--authority`` (passphrase from
MAMMO_AUTHORITY_PASSPHRASE, or asked). A release whose files do not match its
manifest is never signed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

DEFAULT_KEY = REPO.parent / ".mammo-release-signing" / "key.pem"


def default_key() -> Path:
    return Path(os.environ.get("MAMMO_RELEASE_SIGNING_KEY") or DEFAULT_KEY)


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"cannot read the release-signing key {path} ({exc}). Fix: give --key PATH, or set MAMMO_RELEASE_SIGNING_KEY.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path} is not an Ed25519 private key.")
    return key


def new_key(path: Path) -> str:
    """Write a new Ed25519 key (0600, never over an existing file); return its public PEM, to pin."""
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def sign_with_authority(release: Path, authority: Path) -> str:
    import base64

    from edge_agent.inference.activation import SIGNATURE_FILE
    from models.release_files import load_release
    from provisioning.authority import Authority

    load_release(release, verify=True)
    passphrase = os.environ.get("MAMMO_AUTHORITY_PASSPHRASE") or getpass.getpass("Authority passphrase: ")
    version, signature = Authority.open(authority, passphrase).sign((release / "manifest.json").read_bytes())
    tmp = release / (SIGNATURE_FILE + ".tmp")
    tmp.write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    os.replace(tmp, release / SIGNATURE_FILE)
    return f"federation model-signing key v{version}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", nargs="?", type=Path, help="release folder holding manifest.json")
    ap.add_argument("--key", type=Path, default=None, help=f"Ed25519 private key (PEM); default $MAMMO_RELEASE_SIGNING_KEY or {DEFAULT_KEY}")
    ap.add_argument("--authority", type=Path, default=None, help="sign with this federation authority's active model-signing key instead")
    ap.add_argument("--new-key", type=Path, default=None, metavar="PATH", help="create a new project release key at PATH and print its public PEM")
    args = ap.parse_args(argv)

    from edge_agent.errors import MammoError
    from edge_agent.inference.activation import ReleaseTrust, check_signature, load_pinned_keys, sign_release

    if args.new_key is not None:
        print(new_key(args.new_key), end="")
        print(f"# private key written to {args.new_key} (0600). Pin the public key above in models/release/PINNED_RELEASE_KEYS.pem.", file=sys.stderr)
        return 0
    if args.release is None:
        ap.error("give a RELEASE_DIR (or --new-key PATH)")
    release = args.release.resolve()
    try:
        if args.authority is not None:
            print(f"{release}: signed with the {sign_with_authority(release, args.authority)}")
            return 0
        sign_release(release, load_key(args.key or default_key()))
        import datetime as dt

        try:  # say at once whether boxes will accept it: the key must be the pinned one
            signer = check_signature(ReleaseTrust((), load_pinned_keys()), (release / "manifest.json").read_bytes(),
                                     (release / "manifest.sig").read_bytes(), release.name, dt.datetime.now(dt.UTC))
            print(f"{release}: signed; verifies with the {signer} pinned in this software")
        except MammoError:
            print(f"{release}: signed, but NOT with a key pinned in models/release/PINNED_RELEASE_KEYS.pem: unenrolled boxes will refuse it",
                  file=sys.stderr)
            return 1
    except MammoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
