"""``mammo provision ...``: the federation authority (init, issue, revoke, rotate, crl) and the box's enrolment (request, install, status).

The authority commands run where the authority folder is kept (an offline
laptop); the box commands run on the clinic box.  Kits and requests travel
between them on a USB stick.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.cliout import EXIT_OK, add_json_flag, emit
from edge_agent.errors import ProvisioningError
from provisioning import enrolment
from provisioning.authority import DEFAULT_VERIFY_DAYS, Authority
from provisioning.files import write_atomic
from provisioning.keystore import FileKeystore, peek_box_id
from provisioning.pki import MAX_BOX_CERT_DAYS

if TYPE_CHECKING:  # the switchboard (edge_agent.cli) hands each handler args.settings; only its type is named here
    from edge_agent.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prov = sub.add_parser("provision", help="federation authority and box enrolment by startup kit")
    ps = prov.add_subparsers(dest="provision_command", metavar="ACTION", required=True)

    def action(name: str, help: str, handler: Any, authority: bool) -> argparse.ArgumentParser:
        p = ps.add_parser(name, help=help)
        if authority:
            p.add_argument("--authority", type=Path, required=True, metavar="DIR", help="the authority folder")
        add_json_flag(p)
        p.set_defaults(handler=handler)
        return p

    p = action("init", "create the federation's authority: CA, model-signing key, HE contexts", cmd_init, True)
    p.add_argument("--name", default="MammoAI-TR Federation", help="federation name written into the CA certificate")
    p = action("request", "(box) make the box's enrolment key and certificate request", cmd_request, False)
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the request (for the USB stick)")
    p = action("issue", "certify a box's request and write its signed startup kit", cmd_issue, True)
    p.add_argument("--request", type=Path, required=True, metavar="FILE")
    p.add_argument("--out", type=Path, required=True, metavar="KIT")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="the coordinator the box syncs with")
    p.add_argument("--days", type=int, default=MAX_BOX_CERT_DAYS, help=f"certificate lifetime in days (at most {MAX_BOX_CERT_DAYS})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an initial setting for the box (repeatable)")
    p = action("install", "(box) check a startup kit and enrol with it; a refused kit changes nothing", cmd_install, False)
    p.add_argument("kit", type=Path, metavar="KIT")
    p = action("status", "(box) enrolment, certificate expiry, authority; with --authority: the authority's versions", cmd_status, False)
    p.add_argument("--authority", type=Path, default=None, metavar="DIR")
    p = action("revoke", "put a box's certificates on the CA-signed revocation list", cmd_revoke, True)
    p.add_argument("--box", required=True, metavar="BOX_ID")
    p = action("rotate", "new HE context or model-signing key; the old one is retired, kept and dated", cmd_rotate, True)
    p.add_argument("--what", required=True, choices=("he", "signing"))
    p.add_argument("--verify-days", type=int, default=DEFAULT_VERIFY_DAYS, help="days the retired material still verifies old releases / finishes old rounds")
    action("crl", "re-sign the revocation list (the coordinator refuses every box once it is past its next update)", cmd_crl, True)


def authority_passphrase(settings: Settings, *, confirm: bool = False) -> str:
    if settings.authority_passphrase:
        return settings.authority_passphrase
    if not sys.stdin.isatty():
        raise ProvisioningError("No authority passphrase. Fix: set MAMMO_AUTHORITY_PASSPHRASE, or run at a terminal to be asked for it.")
    first = getpass.getpass("Authority passphrase: ")
    if confirm and getpass.getpass("Again: ") != first:
        raise ProvisioningError("The two passphrases differ. Fix: run the command again.")
    return first


def open_keystore(settings: Settings) -> FileKeystore:
    from edge_agent.box import make_private
    from edge_agent.box import open_keystore as open_box_keystore  # late: only the box commands need the box's wiring

    make_private(settings.home)
    return open_box_keystore(settings, sys.stdin.isatty())


def cmd_init(args: argparse.Namespace) -> int:
    auth = Authority.init(args.authority, authority_passphrase(args.settings, confirm=True), name=args.name)
    payload = _authority_status(auth.folder, auth.meta)
    emit(args, payload, f"Authority created in {auth.folder}.\n  CA fingerprint: {payload['ca_fingerprint']}\n"
                        "Give this fingerprint to each box (provision_authority_fingerprint) so it enrols with this authority only.")
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    ks = open_keystore(args.settings)
    pem = enrolment.make_request(ks, enrolment.folder_of(args.settings))
    write_atomic(args.out, pem)
    emit(args, {"box_id": ks.box_id, "request": str(args.out)}, f"Request for box {ks.box_id} written to {args.out}. Take it to the authority.")
    return EXIT_OK


def cmd_issue(args: argparse.Namespace) -> int:
    settings: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ProvisioningError(f"--set {item!r} is not KEY=VALUE. Fix: e.g. --set box_name='Talas ASM'.")
        settings[key.strip()] = value
    auth = Authority.open(args.authority, authority_passphrase(args.settings))
    try:
        request = args.request.read_bytes()
    except OSError as exc:
        raise ProvisioningError(f"Cannot read the request {args.request}: {exc.strerror}. Fix: give the file `mammo provision request` wrote.") from None
    kit = auth.issue_kit(request, coordinator=args.coordinator, days=args.days, settings=settings)
    write_atomic(args.out, kit)
    issued = auth.meta["issued"][-1]
    emit(args, {"kit": str(args.out), **issued}, f"Kit for box {issued['box_id']} written to {args.out} (certificate {issued['serial']}, valid until {issued['not_after']}).")
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    try:
        raw = args.kit.read_bytes()
    except OSError as exc:
        raise ProvisioningError(f"Cannot read the kit {args.kit}: {exc.strerror}. Fix: check the USB stick and the path.") from None
    ks = open_keystore(args.settings)
    folder = enrolment.folder_of(args.settings)
    kit = enrolment.install(raw, keystore=ks, folder=folder, pinned_authority=args.settings.provision_authority_fingerprint)
    st = enrolment.status(folder, ks.box_id)
    _audit(args.settings, ks, "provision_install", {"kit": args.kit.name, "certificate_expires": st.get("certificate_expires"),
                                                     "authority": st.get("authority_fingerprint"), "coordinator": kit.coordinator})
    emit(args, st, f"Box {kit.box_id} enrolled: certificate valid until {st['certificate_expires']} ({st['days_left']} days), coordinator {kit.coordinator or 'not set'}.")
    return EXIT_OK


def _audit(settings: Settings, ks: FileKeystore, action: str, details: dict[str, Any]) -> None:
    """Enrolment is an entry of the box's audit trail (edge_agent.audit); the box key signs the trail's checkpoints."""
    from edge_agent import audit  # late: the authority commands, on the authority's laptop, have no box database
    from edge_agent.audit_cli import cli_actor
    from edge_agent.store import open_database

    db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    try:
        audit.append(db, cli_actor(), action, ks.box_id, details, signer=ks, checkpoint_every=settings.audit_checkpoint_every)
    finally:
        db.conn.close()


def cmd_status(args: argparse.Namespace) -> int:
    if args.authority is not None:
        try:
            meta = json.loads((args.authority / "authority.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProvisioningError(f"{args.authority} is not an authority folder ({exc}). Fix: give the folder `mammo provision init` made.") from None
        emit(args, _authority_status(args.authority, meta))
        return EXIT_OK
    s: Settings = args.settings
    st = enrolment.status(enrolment.folder_of(s), peek_box_id(s.keystore_path))
    if st["enrolled"]:
        text = (f"Box {st['box_id']}: {st['state']}; certificate until {st['certificate_expires']} ({st['days_left']} days left)\n"
                f"  authority {st['authority_fingerprint']}\n  coordinator {st['coordinator'] or 'not set'}\n"
                f"  HE context v{st['he_version']} sha256 {st['he_context_sha256']}\n  model-signing key v{st['model_signing_version']} {st['model_signing_key_fingerprint']}")
    else:
        text = f"Box {st['box_id'] or '(no keystore yet)'} is not enrolled." + (" A request was made; install the kit." if st["requested"] else " Run `mammo provision request`.")
    emit(args, st, text)
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    auth = Authority.open(args.authority, authority_passphrase(args.settings))
    serials = auth.revoke(args.box)
    emit(args, {"box_id": args.box, "revoked_serials": serials, "crl": str(args.authority / "crl.pem")},
         f"Box {args.box} revoked ({len(serials)} certificate(s)). Copy {args.authority / 'crl.pem'} to the coordinator.")
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    auth = Authority.open(args.authority, authority_passphrase(args.settings))
    version = auth.rotate(args.what, verify_days=args.verify_days)
    emit(args, {"what": args.what, "version": version}, f"{args.what} material v{version} is active; the previous version is retired. Issue new kits to pass it on.")
    return EXIT_OK


def cmd_crl(args: argparse.Namespace) -> int:
    auth = Authority.open(args.authority, authority_passphrase(args.settings))
    auth.refresh_crl()
    crl = auth.crl()
    emit(args, {"crl": str(args.authority / "crl.pem"), "next_update": str(crl.next_update_utc), "revoked": len(crl)},
         f"Revocation list re-signed; next update due {crl.next_update_utc}.")
    return EXIT_OK


def _authority_status(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {"authority": str(folder), "name": meta["name"], "ca_fingerprint": meta["ca_fingerprint"], "he": meta["he"], "signing": meta["signing"],
            "issued": len(meta["issued"]), "revoked": meta["revoked"]}
