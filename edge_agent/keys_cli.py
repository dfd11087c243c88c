"""``mammo keys status|reprotect`` and ``mammo factory-reset``: the keystore's protectors, and the crypto-erase.

``reprotect`` is how a box leaves demo mode, changes its passphrase, adds a
TPM it did not have, or seals again after a PCR change: it unlocks with
what it has (the TPM, the passphrase, or the demo file one last time),
rewraps the same keys under a fresh KEK for a new passphrase plus the TPM,
and destroys the demo file.  ``factory-reset`` needs no passphrase: it
destroys the keystore (overwrite, fsync, unlink), which makes every image
and database secret sealed under the master key unreadable, then removes
the rest of the box's state.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
from typing import Any

from edge_agent.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_json_flag, emit
from edge_agent.errors import KeystoreError
from edge_agent.settings import Settings

KEPT_ON_RESET = ("mammo.toml",)  # the operator's settings file: a reset box comes back as the same kind of box (demo or clinic)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="the keystore's protectors (passphrase, TPM) and demo mode")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("status", help="demo mode, protectors, TPM availability (no passphrase needed)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_status)
    p = ksub.add_parser("reprotect", help="set a new passphrase and seal to the TPM again (leaves demo mode: destroys the passphrase file)")
    p.add_argument("--stdin", action="store_true", help="read the new passphrase from the first line of stdin instead of the terminal")
    add_json_flag(p)
    p.set_defaults(handler=cmd_reprotect)

    p = sub.add_parser("factory-reset", help="crypto-erase: destroy the keystore (all encrypted data becomes unreadable), then the box's state")
    p.add_argument("--yes", action="store_true", help="really do it: nothing can be recovered afterwards")
    add_json_flag(p)
    p.set_defaults(handler=cmd_factory_reset)


def status(settings: Settings) -> dict[str, Any]:
    from edge_agent.box import demo_passphrase_file, tcti_of
    from provisioning import tpm
    from provisioning.keystore import peek_box_id, protector_records
    from provisioning.protectors import describe

    records = protector_records(settings.keystore_path)
    reason = tpm.unavailable(tcti_of(settings)) if settings.keystore_tpm != "off" else "keystore_tpm = off"
    return {"box_id": peek_box_id(settings.keystore_path), "keystore": str(settings.keystore_path), "exists": settings.keystore_path.exists(),
            "demo_mode": settings.keystore_demo_mode, "passphrase_file": demo_passphrase_file(settings).exists(),
            "protectors": [describe(r) for r in records], "tpm_available": reason is None, "tpm_unavailable_reason": reason}


def cmd_status(args: argparse.Namespace) -> int:
    st = status(args.settings)
    lines = [f"keystore   : {st['keystore']}" + ("" if st["exists"] else " (not created yet)"),
             f"demo mode  : {'yes (a stolen disk is readable)' if st['demo_mode'] else 'no'}"
             + (" - passphrase file present" if st["passphrase_file"] else ""),
             f"protectors : {', '.join(st['protectors']) or '-'}",
             f"TPM        : {'available' if st['tpm_available'] else st['tpm_unavailable_reason']}"]
    emit(args, st, "\n".join(lines))
    return EXIT_OK


def cmd_reprotect(args: argparse.Namespace) -> int:
    from edge_agent.box import creation_protectors, demo_passphrase_file, make_private, tcti_of
    from provisioning.keystore import FileKeystore, crypto_erase
    from provisioning.protectors import PassphraseProtector, Protector
    from provisioning.tpm import TpmProtector

    s: Settings = args.settings
    make_private(s.home)
    interactive = sys.stdin.isatty()
    demo_file = demo_passphrase_file(s)

    def current() -> str:  # the demo file is read here even outside demo mode: this is how a box leaves it
        if s.keystore_passphrase:
            return s.keystore_passphrase
        if demo_file.exists():
            return demo_file.read_text(encoding="utf-8").strip()
        if interactive:
            return getpass.getpass("Current keystore passphrase: ")
        raise KeystoreError("No current passphrase. Fix: set MAMMO_KEYSTORE_PASSPHRASE, or run at a terminal.")

    unlockers: list[Protector] = [PassphraseProtector(current)]
    if s.keystore_tpm != "off":
        unlockers.insert(0, TpmProtector(tcti_of(s), s.keystore_tpm_pcrs))
    keystore = FileKeystore.unlock(s.keystore_path, unlockers)
    new = sys.stdin.readline().rstrip("\n") if args.stdin else None
    if args.stdin and not new:
        raise KeystoreError("No new passphrase on stdin. Fix: pipe one line holding it.")
    if not args.stdin and not interactive:
        raise KeystoreError("A new passphrase is typed at a terminal. Fix: run `mammo keys reprotect` at the box's console, or pass --stdin.")
    protectors = creation_protectors(s, interactive, passphrase=new)
    keystore.reprotect(s.keystore_path, protectors)
    erased = crypto_erase(demo_file)
    kinds = [p.kind for p in protectors]
    payload = {"box_id": keystore.box_id, "protectors": kinds, "passphrase_file_destroyed": erased}
    emit(args, payload, f"Keystore of box {keystore.box_id} now opens with: {', '.join(kinds)}."
         + (f" Destroyed {demo_file}; set keystore_demo_mode = false." if erased else ""))
    return EXIT_OK


def cmd_factory_reset(args: argparse.Namespace) -> int:
    from edge_agent.box import demo_passphrase_file
    from provisioning.keystore import crypto_erase

    s: Settings = args.settings
    home = s.home
    if not args.yes:
        print(f"factory-reset destroys the keystore in {home}: every image and result on this box becomes unreadable, for good. "
              "Fix: run `mammo factory-reset --yes` to do it.", file=sys.stderr)
        return EXIT_USAGE
    if not (s.keystore_path.exists() or s.db_path.exists()):
        emit(args, {"reset": False, "home": str(home)}, f"{home} holds no box (no keystore, no database): nothing was removed.")
        return EXIT_OK
    erased = crypto_erase(s.keystore_path)  # first: from here on nothing sealed on the box can be read
    crypto_erase(demo_passphrase_file(s))
    removed, failed = [], []
    for child in sorted(home.iterdir()):
        if child.name in KEPT_ON_RESET:
            continue
        try:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            removed.append(child.name)
        except OSError as exc:
            failed.append(f"{child.name}: {exc.strerror}")
    fd = os.open(home, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    payload = {"reset": True, "keystore_erased": erased, "removed": removed, "kept": [n for n in KEPT_ON_RESET if (home / n).exists()], "failed": failed}
    text = (f"Keystore destroyed: the data that was in {home} can no longer be decrypted. Removed {len(removed)} item(s)."
            + (f" Could not remove: {'; '.join(failed)} (remove by hand)." if failed else "") + " `mammo up` starts a new box.")
    emit(args, payload, text)
    return EXIT_FAILED if failed else EXIT_OK
