"""The box's one settings object.

Loaded once at start-up from a TOML file plus ``MAMMO_*`` environment
variables, then passed explicitly to whatever needs it; nothing reads the
environment behind its back.  Precedence, lowest first: the defaults
embedded here, ``$MAMMO_HOME/mammo.toml`` (or ``MAMMO_CONFIG``), then the
environment.

TOML sections map onto field-name prefixes, so ``[queue] lease_s = 30`` sets
``queue_lease_s`` and so does ``MAMMO_QUEUE_LEASE_S=30``.  Every field carries
its help text in ``metadata["help"]`` (a test checks that none is missing) and
``mammo settings --json`` prints them all.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import SettingsError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / "var"
ENV_PREFIX = "MAMMO_"
SECTIONS = ("box", "keystore", "queue", "db", "audit", "log", "kiosk", "console", "dicom", "ingest", "infer", "sync", "provision", "authority", "train", "pacs", "report", "sms", "metrics")


def setting(default: Any, help: str, *, check: typing.Callable[[Any], bool] | None = None, fix: str = "", secret: bool = False) -> Any:
    """Declare a documented field; ``check`` validates, ``fix`` tells a person what to write instead."""
    return field(default=default, metadata={"help": help, "check": check, "fix": fix, "secret": secret})


def _positive(v: Any) -> bool:
    return bool(v > 0)


def _port(v: int) -> bool:
    return 0 <= v <= 65535


def _zone_ok(v: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _pacs_destinations(v: str) -> bool:
    from edge_agent.pacs.destinations import parse_destinations  # late, as _dicom_peers

    try:
        parse_destinations(v)
    except SettingsError:
        return False
    return True


def _http_url(v: str) -> bool:
    """Empty, or an absolute http(s) URL with a host and no query or fragment (a typo must stop the box, not every send)."""
    if v == "":
        return True
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname) and port_ok and not parts.query and not parts.fragment and " " not in v


def _window_ok(v: str) -> bool:
    import re

    m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", v.strip())
    return m is not None and int(m[1]) < 24 and int(m[3]) < 24 and int(m[2]) < 60 and int(m[4]) < 60


def _dicom_peers(v: str) -> bool:
    from edge_agent.ingest.peers import parse_peers  # late: settings must not pull the ingest package in at import

    try:
        parse_peers(v)
    except SettingsError:
        return False
    return True


@dataclass(frozen=True)
class Settings:
    # --- box ---------------------------------------------------------------
    home: Path = setting(DEFAULT_HOME, "Data directory holding every piece of state (database, keystore, images, logs). Env MAMMO_HOME.")
    box_name: str = setting("Demo Aile Sağlığı Merkezi", "Human name of this clinic box, shown in the kiosk and the console.")
    box_city: str = setting("Kayseri", "City of the clinic, shown on referrals.")
    timezone: str = setting("Europe/Istanbul", "IANA time zone of the clinic: every time the kiosk shows or prints (worklist, study, referral, audit, "
                            "'today' counts, follow-up dates) is in it, whatever zone the box's clock runs in (often UTC).",
                            check=lambda v: _zone_ok(v), fix="an IANA zone name such as Europe/Istanbul")
    # --- keystore ------------------------------------------------------------
    keystore_passphrase: str | None = setting(
        None,
        "Passphrase that unlocks the keystore (its passphrase protector). If unset: in demo mode generated once into "
        "$MAMMO_HOME/secrets/passphrase; otherwise asked at a terminal (twice when the keystore is created), unless the TPM unlocks the box.",
        secret=True,
    )
    keystore_demo_mode: bool = setting(
        True,
        "Demo mode: an unattended first start generates the keystore passphrase into $MAMMO_HOME/secrets/passphrase (0600), "
        "so the appliance starts with no one at it, and a stolen disk is readable. A clinic box sets false: the passphrase then "
        "comes from MAMMO_KEYSTORE_PASSPHRASE or a terminal, the TPM unlocks it unattended where there is one, and a passphrase file is refused.",
    )
    keystore_tpm: str = setting(
        "auto",
        "TPM 2.0 protector: auto (seal the keystore's key to this machine's TPM when it has one and tpm2-pytss is installed), off, "
        "or a TCTI naming the TPM (device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321). A box whose TPM holds the key starts without its passphrase.",
        check=lambda v: v in {"auto", "off"} or ":" in v, fix="auto, off, or a TCTI such as device:/dev/tpmrm0",
    )
    keystore_tpm_pcrs: str = setting(
        "",
        "PCRs the TPM seal is bound to, e.g. sha256:0,2,4,7 (firmware and boot chain): after a firmware or boot update the TPM refuses, "
        "the passphrase opens the box and `mammo keys reprotect` seals again. Empty: not bound to PCRs.",
        check=lambda v: v == "" or (v.partition(":")[0] in {"sha1", "sha256", "sha384"} and all(p.isdigit() for p in v.partition(":")[2].split(","))),
        fix="empty, or a bank and PCR numbers such as sha256:0,7",
    )
    # --- provisioning (owned by provisioning/: enrolment in a federation) ------
    provision_authority_fingerprint: str | None = setting(
        None,
        "SHA-256 fingerprint (hex) of the federation CA this box may enrol with, as `mammo provision init` prints it. "
        "When set, `mammo provision install` refuses kits of any other authority, even the first; unset, the first kit installed pins its authority.",
        check=lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v), fix="64 lowercase hex digits, as `mammo provision init` prints",
    )
    authority_passphrase: str | None = setting(
        None,
        "Passphrase of the federation authority's private keys, used only where the authority folder is kept "
        "(`mammo provision init|issue|revoke|rotate|crl`). If unset: asked at a terminal.",
        secret=True,
    )
    # --- queue -------------------------------------------------------------
    queue_lease_s: float = setting(60.0, "Seconds a claimed job stays leased before another worker may take it.", check=_positive, fix="a number of seconds > 0")
    queue_max_attempts: int = setting(5, "Attempts before a job is dead-lettered.", check=_positive, fix="an integer >= 1")
    queue_backoff_base_s: float = setting(2.0, "Retry delay ceiling after the first failed attempt, in seconds; it doubles per attempt up to queue_backoff_cap_s. Equal jitter: each delay is between half the ceiling and the ceiling, never zero.", check=_positive, fix="a number of seconds > 0")
    queue_backoff_cap_s: float = setting(600.0, "Upper bound of the retry delay in seconds.", check=_positive, fix="a number of seconds > 0")
    # --- db -----------------------------------------------------------------
    db_max_size_mb: int = setting(0, "Hard cap on the box database size in MiB (0 = only the disk limits it).", check=lambda v: v >= 0, fix="an integer >= 0")
    audit_checkpoint_every: int = setting(1000, "The box identity key signs a checkpoint of the audit trail every this many entries (and at each `mammo audit verify` and `export`); a tail cut below the newest checkpoint is detected. 0 signs only at verify and export.", check=lambda v: v >= 0, fix="an integer >= 0")
    # --- log ----------------------------------------------------------------
    log_level: str = setting(
        "INFO", "Log level of the box daemon.",
        check=lambda v: v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, fix="one of DEBUG, INFO, WARNING, ERROR",
    )
    # --- kiosk --------------------------------------------------------------
    kiosk_host: str = setting("127.0.0.1", "Address the family doctor's kiosk listens on.")
    kiosk_port: int = setting(8080, "Port of the kiosk web UI.", check=_port, fix="a TCP port 0-65535")
    kiosk_language: str = setting("tr", "Default language of the kiosk (tr or en); each user may switch in the page header.", check=lambda v: v in {"tr", "en"}, fix="tr or en")
    kiosk_idle_timeout_s: float = setting(900.0, "Seconds of inactivity after which a kiosk user is signed out (the page also returns to sign-in by itself).", check=_positive, fix="a number of seconds > 0")
    kiosk_lockout_failures: int = setting(5, "Consecutive wrong passwords after which a kiosk account is locked (a user name with no account locks the same way, so the answers never tell which names exist).", check=_positive, fix="an integer >= 1")
    kiosk_lockout_s: float = setting(900.0, "Seconds a locked kiosk account stays locked (an admin can unlock it earlier with `mammo user unlock`).", check=_positive, fix="a number of seconds > 0")
    kiosk_signin_source_burst: int = setting(20, "Failed kiosk sign-ins one client address may make in a row; then the kiosk answers 429 (Too Many Requests, with Retry-After) without checking the password or writing an audit row per try.", check=_positive, fix="an integer >= 1")
    kiosk_signin_source_refill_s: float = setting(30.0, "Seconds after which a client address earns back one failed sign-in.", check=_positive, fix="a number of seconds > 0")
    kiosk_signin_account_burst: int = setting(10, "Failed kiosk sign-ins for one user name (real or not, from every address together) in a row before 429.", check=_positive, fix="an integer >= 1")
    kiosk_signin_account_refill_s: float = setting(60.0, "Seconds after which a user name earns back one failed sign-in.", check=_positive, fix="a number of seconds > 0")
    kiosk_upload_max_bytes: int = setting(512 * 1024 * 1024, "Largest USB upload (all files of one request together) the kiosk accepts, in bytes.", check=_positive, fix="an integer number of bytes > 0")
    kiosk_upload_max_files: int = setting(200, "Most files accepted in one kiosk upload.", check=_positive, fix="an integer >= 1")
    kiosk_worklist_days: int = setting(30, "How many days back the worklist reaches by default (search and the 'all' filter reach further).", check=_positive, fix="an integer >= 1")
    kiosk_worklist_limit: int = setting(200, "Most rows the worklist shows at once (the newest, priority first).", check=_positive, fix="an integer >= 1")
    kiosk_online_probe: str = setting("", "host:port probed (TCP, 1 s timeout, every 30 s) to show online/offline in the status bar; empty means the box shows offline until sync is configured.")
    kiosk_tls_certfile: Path | None = setting(None, "TLS certificate (PEM) for the kiosk; with kiosk_tls_keyfile it serves HTTPS and marks session cookies Secure.")
    kiosk_tls_keyfile: Path | None = setting(None, "TLS private key (PEM) matching kiosk_tls_certfile.")
    # --- console (owned by edge_agent.console) ------------------------------
    console_language: str = setting("tr", "Language of the technician's console, `mammo console` (tr or en); `--lang` overrides it and the l key switches while it runs.", check=lambda v: v in {"tr", "en"}, fix="tr or en")
    # --- infer ----------------------------------------------------------------
    infer_profile: str | None = setting(None, "Force a hardware profile by name (see `mammo hw detect`); unset = chosen from what the machine offers. A forced profile that cannot run falls back to cpu-small, visibly.")
    infer_tflite_delegate: str | None = setting(None, "Path of a TFLite external delegate library (an NPU's) to use before searching the usual library folders.")
    infer_selftest_tolerance: float = setting(0.08, "Largest difference in probability between a release's bundled self-test expectations and this box's run; above it, activation is refused.", check=_positive, fix="a probability difference > 0, e.g. 0.08")
    # --- ingest (owned by edge_agent.ingest) ---------------------------------
    dicom_ae_title: str = setting(
        "MAMMO_EDGE", "AE title of the box's DICOM receiver (C-STORE/C-ECHO SCP); the modality sends to this title.",
        check=lambda v: 0 < len(v.strip()) <= 16 and v.isascii() and "\\" not in v, fix="1-16 ASCII characters without backslash",
    )
    dicom_host: str = setting("0.0.0.0", "Address the DICOM receiver listens on (0.0.0.0 = every interface, so the modality can reach it).")
    dicom_port: int = setting(11112, "TCP port of the DICOM receiver (11112 is the registered DICOM port).", check=_port, fix="a TCP port 0-65535")
    dicom_require_called_ae: bool = setting(True, "Refuse associations whose Called AE Title is not dicom_ae_title (catches a mis-configured modality).")
    dicom_peers: str = setting(
        "",
        "Modalities allowed to open an association, as Orthanc's DicomModalities: a comma-separated list of AE_TITLE@address "
        "(address: an IP or a network such as 10.0.5.0/24; AE_TITLE@* for any address, *@address for any title from that address, "
        "* for anyone, which is logged as a warning). Refused associations are logged with the calling AE title and address. "
        "Env MAMMO_DICOM_PEERS.",
        check=_dicom_peers, fix="a comma-separated list of AE_TITLE@address, AE_TITLE@*, *@address or *, e.g. MAMMO_UNIT@10.0.5.21",
    )
    dicom_allow_loopback: bool = setting(True, "Also accept any AE title from this machine (127.0.0.0/8, ::1), so the box's own tools and benchmarks can send without being listed in dicom_peers.")
    dicom_max_associations: int = setting(10, "Most connections the DICOM receiver serves at once; when full, the oldest connection that has not sent its association request is closed to make room, and if there is none the new one is closed.", check=_positive, fix="an integer >= 1")
    dicom_max_associations_per_peer: int = setting(4, "Most connections one calling address may hold at once; past it, that address's oldest connection without an association request makes room, so idle connections cannot lock a modality out.", check=_positive, fix="an integer >= 1")
    dicom_acse_timeout_s: float = setting(10.0, "Seconds a new connection may take to send its association request (and to answer a release) before it is closed.", check=_positive, fix="a number of seconds > 0")
    dicom_network_timeout_s: float = setting(60.0, "Seconds an association may stay silent before it is aborted; keep it above ingest_timeout_s, since the modality waits silently while a file is ingested.", check=_positive, fix="a number of seconds > 0")
    dicom_dimse_timeout_s: float = setting(30.0, "Seconds the receiver waits for the next part of a DIMSE message (C-STORE, C-ECHO) on an association.", check=_positive, fix="a number of seconds > 0")
    dicom_max_pdu_bytes: int = setting(1_048_576, "Largest PDU the receiver accepts, announced to the modality (DICOM's 'maximum length'); the receiver holds about one PDU per association in memory, datasets go to a spool file.", check=lambda v: 4096 <= v < 2**32, fix="an integer number of bytes from 4096 to 4294967295")
    dicom_ack_backlog: int = setting(8, "Received C-STOREs acknowledged as soon as their spool file is fsync'd into $MAMMO_HOME/spool/accepted, and ingested behind the acknowledgement (a restart ingests what is left there before it listens); past this many waiting, the receiver stores an image before acknowledging it. 0 acknowledges every image only once it is stored.", check=lambda v: v >= 0, fix="an integer >= 0 (0 = acknowledge after storing)")
    ingest_drop_folder: Path | None = setting(None, "Folder watched for DICOM files (USB import, network share); empty means $MAMMO_HOME/drop. Files are deleted once safely stored or quarantined.")
    ingest_drop_poll_s: float = setting(2.0, "Polling interval in seconds of the drop folder when file-system events are unavailable, and how long a file's size and modification time must stay unchanged before it is read.", check=_positive, fix="a number of seconds > 0")
    ingest_max_file_bytes: int = setting(1_073_741_824, "Largest DICOM file accepted, in bytes; bigger files are quarantined unread.", check=_positive, fix="an integer number of bytes > 0")
    ingest_max_pixels: int = setting(100_000_000, "Largest declared image (rows x columns x frames x samples) decoded; checked before any pixel is decoded.", check=_positive, fix="an integer > 0")
    ingest_timeout_s: float = setting(60.0, "Time budget in seconds to parse, decode, fix and de-identify one file; a slower file is quarantined with reason timeout and its worker process is killed and replaced.", check=_positive, fix="a number of seconds > 0")
    ingest_workers: int = setting(0, "Worker processes that parse, decode, fix and de-identify incoming files, so a slow or crashing file cannot stall or take down the daemon; 0 means one per usable CPU core.", check=lambda v: v >= 0, fix="an integer >= 0 (0 = one per core)")
    ingest_max_depth: int = setting(16, "Deepest nesting of DICOM sequences accepted; deeper files are quarantined (guards against recursion bombs).", check=_positive, fix="an integer >= 1")
    ingest_study_complete_timeout_s: float = setting(900.0, "A mammography study without all four screening views counts as complete once no image arrived for this many seconds.", check=_positive, fix="a number of seconds > 0")
    ingest_date_shift_max_days: int = setting(3650, "Upper bound of the per-patient date shift (days into the past) applied when de-identifying; the shift is derived from a box secret so it is stable per patient.", check=_positive, fix="an integer >= 1")
    ingest_quarantine_burned_in: bool = setting(True, "Quarantine for a person's review images flagged BurnedInAnnotation=YES, and images not flagged NO in which a line of text is detected in the pixels.")
    # --- end ingest -----------------------------------------------------------
    # --- train (owned by edge_agent.learning: opportunistic local training with differential privacy) ---------------
    train_enabled: bool = setting(True, "Let the box train on its radiologist-confirmed studies when the training policy allows (idle, in the window, cool, on mains). False: no round starts by itself; `mammo train run` still works.")
    train_window: str = setting(
        "22:00-06:00", "Local-time window (HH:MM-HH:MM, in the box's time zone; may cross midnight) in which scheduled rounds may run. `mammo train run --force-window` ignores it.",
        check=lambda v: _window_ok(v), fix="two times HH:MM-HH:MM, e.g. 22:00-06:00",
    )
    train_max_load: float = setting(0.5, "Largest 1-minute load average per CPU core at which a round may start or resume (screening and ingest come first).", check=_positive, fix="a number > 0, e.g. 0.5")
    train_max_temp_c: float = setting(75.0, "Hottest thermal zone (degrees C) at which a round may start; ignored where the platform reports no temperature.", check=_positive, fix="degrees Celsius > 0")
    train_require_mains: bool = setting(True, "Train only on mains power where the platform reports it (a box on battery or UPS keeps its charge for screening).")
    train_min_examples: int = setting(16, "Fewest confirmed studies (women, after the held-back part) a round trains on; fewer means no round.", check=_positive, fix="an integer >= 1")
    train_min_new_examples: int = setting(8, "Fewest studies confirmed since the last round before the schedule starts another one.", check=lambda v: v >= 0, fix="an integer >= 0")
    train_epsilon_budget: float = setting(1.0, "Differential-privacy budget (epsilon) of one model generation (one base model version), composed over all its rounds with the RDP accountant; a round that would exceed it does not start.", check=_positive, fix="a number > 0, e.g. 1.0")
    train_delta: float = setting(1e-5, "Differential-privacy delta of the budget, per woman.", check=lambda v: 0 < v < 1, fix="a probability, e.g. 1e-5")
    train_round_epsilon: float = setting(0.25, "Share of the budget (epsilon, composed) one round plans to spend; the noise multiplier is chosen for it, unless train_noise_multiplier is set.", check=_positive, fix="a number > 0, e.g. 0.25")
    train_noise_multiplier: float = setting(0.0, "Noise multiplier of DP-SGD; 0 derives it from train_round_epsilon and the number of confirmed studies.", check=lambda v: v >= 0, fix="a number >= 0")
    train_max_grad_norm: float = setting(1.0, "Per-woman gradient clipping bound of DP-SGD.", check=_positive, fix="a number > 0")
    train_batch_size: int = setting(8, "Expected number of studies per DP-SGD step (Poisson sampling rate = this / training studies).", check=_positive, fix="an integer >= 1")
    train_steps: int = setting(60, "DP-SGD steps per round.", check=_positive, fix="an integer >= 1")
    train_lr: float = setting(0.05, "Learning rate of the SGD steps (momentum 0.9).", check=_positive, fix="a number > 0")
    train_holdout_fraction: float = setting(0.25, "Share of the box's women (by pseudonym, stable) held back from training to evaluate adapted models (the evaluation gate).", check=lambda v: 0 < v < 1, fix="a fraction between 0 and 1, e.g. 0.25")
    train_gate_margin: float = setting(0.02, "AUC gain over the active model that the lower end of the 95% interval (held-back women, paired) must reach for a locally adapted model to serve this box; otherwise it is only an update candidate.", check=lambda v: v >= 0, fix="an AUC difference >= 0, e.g. 0.02")
    train_gate_min_cases: int = setting(5, "Fewest held-back positive and negative studies (each) the gate needs to compare; fewer and the result is only a candidate.", check=_positive, fix="an integer >= 1")
    train_serve_local: bool = setting(True, "Screen with a locally adapted model once the gate approves it (the box builds, signs with its own local key, self-tests and activates it; `mammo model rollback` undoes it). Off: approved models are built but only federated releases are activated.")
    train_check_interval_s: float = setting(300.0, "Seconds between the scheduler's policy checks (APScheduler job, persisted in $MAMMO_HOME/learning/schedule.sqlite3).", check=_positive, fix="a number of seconds > 0")
    train_resume_idle_s: float = setting(20.0, "Seconds the inference queue must stay empty before a round paused for screening continues.", check=lambda v: v >= 0, fix="a number of seconds >= 0")
    train_update_sink: str = setting("sync.outbox:place_update", "Where a finished round's update goes, as module:function(box_db, home, update) -> update_id (the box reaches sync only by this name).",
                                     check=lambda v: ":" in v, fix="module:function, e.g. sync.outbox:place_update")
    # --- pacs (owned by edge_agent.pacs) ---------------------------------------
    pacs_destinations: str = setting(
        "",
        "Hospital PACS the box sends referred studies to (C-STORE, calling AE dicom_ae_title): a comma-separated list of "
        "AE_TITLE@host:port/mode, mode identified (the woman's care team: her name, ID and real dates restored) or deidentified "
        "(research/teleradiology: de-identified again with that destination's own key); /identified when left out. "
        "Env MAMMO_PACS_DESTINATIONS.",
        check=_pacs_destinations,
        fix="a comma-separated list of AE_TITLE@host:port/identified or AE_TITLE@host:port/deidentified, e.g. HOSP_PACS@10.0.5.40:104/identified",
    )
    pacs_timeout_s: float = setting(30.0, "Seconds a PACS may take to accept an association, answer the C-ECHO or acknowledge one C-STORE before the export attempt counts as failed (it is retried).", check=_positive, fix="a number of seconds > 0")
    pacs_max_attempts: int = setting(48, "Attempts of one export before it is marked failed (retry delays grow to queue_backoff_cap_s, so the default keeps trying for about eight hours of PACS outage); `mammo export study` again puts a failed export back in line.", check=_positive, fix="an integer >= 1")

    # --- report / sms / metrics (owned by edge_agent.reporting) ----------------
    report_fhir_enabled: bool = setting(
        False,
        "Send each radiologist-confirmed screening report, identified (name, patient ID, birth date), as a FHIR R4 transaction "
        "Bundle to report_fhir_url: the one official channel on which identified data leaves the box; every send is in the audit trail. "
        "Off: nothing is sent and each report shows 'disabled'.",
    )
    report_fhir_url: str = setting(
        "",
        "Base URL of the FHIR R4 endpoint the Bundles are POSTed to (http:// or https://, no query). Checked at start-up. "
        "Env MAMMO_REPORT_FHIR_URL.",
        check=lambda v: _http_url(v), fix="empty, or an absolute http(s) URL such as https://fhir.example.gov.tr/fhir",
    )
    report_fhir_token: str | None = setting(None, "Bearer token sent to report_fhir_url (Authorization header); unset sends none.", secret=True)
    report_fhir_timeout_s: float = setting(15.0, "Seconds one FHIR send may take (connect, write and answer) before the attempt counts as failed and is retried.", check=_positive, fix="a number of seconds > 0")
    report_max_attempts: int = setting(150, "Attempts of one report send before it is marked failed (retry delays grow to queue_backoff_cap_s, so the default keeps trying for about a day of endpoint outage); `mammo report send STUDY` or `mammo queue requeue report` puts it back in line.", check=_positive, fix="an integer >= 1")
    report_adapter: str = setting(
        "fhir",
        "What the national record receives: fhir (the Bundle itself) or enabiz (e-Nabız's own package format: the adapter interface "
        "exists, a production adapter does not yet, so the box refuses to start with it; see README, Reporting out).",
        check=lambda v: v in {"fhir", "enabiz"}, fix="fhir or enabiz",
    )
    report_patient_id_system: str = setting(
        "urn:mammoai-tr:patient-id",
        "FHIR identifier system written for the Patient ID the modality sends (in Türkiye usually the T.C. Kimlik No: set the receiving "
        "system's URI for it here). The receiver matches patients on it.",
        check=lambda v: ":" in v and " " not in v, fix="a URI such as urn:oid:... or https://...",
    )
    sms_enabled: bool = setting(False, "Send the family doctor a short Turkish SMS (no diagnosis, no name: a study reference) when a study needs priority radiologist review.")
    sms_gateway_url: str = setting(
        "",
        "HTTP SMS gateway the notices are POSTed to as JSON {to, text, sender, reference}. Checked at start-up. Env MAMMO_SMS_GATEWAY_URL.",
        check=lambda v: _http_url(v), fix="empty, or an absolute http(s) URL such as https://sms.example.com.tr/api/send",
    )
    sms_gateway_token: str | None = setting(None, "Bearer token sent to sms_gateway_url; unset sends none.", secret=True)
    sms_recipients: str = setting(
        "",
        "Mobile numbers of the clinic's family doctors who get the notice, comma-separated, international form (+905321234567).",
        check=lambda v: all(p.strip().startswith("+") and p.strip()[1:].isdigit() and 8 <= len(p.strip()) <= 16 for p in v.split(",") if p.strip()),
        fix="a comma-separated list of numbers like +905321234567",
    )
    sms_sender: str = setting("MAMMOAI", "Sender name (originator) the gateway shows, as registered with the operator.")
    sms_timeout_s: float = setting(10.0, "Seconds one SMS gateway call may take before the attempt counts as failed and is retried.", check=_positive, fix="a number of seconds > 0")
    sms_max_attempts: int = setting(30, "Attempts of one SMS before it is marked failed (about four hours of gateway outage with the default backoff).", check=_positive, fix="an integer >= 1")
    sms_per_minute: int = setting(6, "Most SMS the box sends in any 60 seconds; more wait their turn in the notify queue.", check=_positive, fix="an integer >= 1")
    sms_per_hour: int = setting(60, "Most SMS the box sends in any hour; more wait their turn in the notify queue.", check=_positive, fix="an integer >= 1")
    metrics_enabled: bool = setting(True, "Serve Prometheus metrics at http://metrics_host:metrics_port/metrics while `mammo up` runs.")
    metrics_host: str = setting("127.0.0.1", "Address the Prometheus endpoint listens on (0.0.0.0 to let a fleet Prometheus reach it over the clinic's VPN). Env MAMMO_METRICS_HOST.")
    metrics_port: int = setting(9464, "TCP port of the Prometheus endpoint (0: any free port, logged). Env MAMMO_METRICS_PORT.", check=_port, fix="a TCP port 0-65535")

    # Federated sync over Flower (sync.service on a box, `mammo coordinator up` on the coordinator).
    sync_enabled: bool = setting(True, "Run the box's Flower SuperNode while `mammo up` runs, once a startup kit with a coordinator address is installed; false keeps every finished update in the outbox and never connects.")
    sync_superlink: str = setting("", "host:port the SuperNode dials instead of the kit's coordinator address (a tunnel, a relay, or the test proxy); empty uses the kit's. Env MAMMO_SYNC_SUPERLINK.")
    sync_supernode_port: int = setting(0, "Local port of the SuperNode's own Runtime API (Flower opens one per node; 0: a free port at each start).", check=_port, fix="a TCP port 0-65535")
    sync_coordinator_host: str = setting("127.0.0.1", "Address the coordinator's SuperLink listens on (`mammo coordinator up`); its TLS certificate names it.")
    sync_coordinator_port: int = setting(9092, "TCP port of the coordinator's SuperLink (Fleet, Control and Runtime APIs over HTTPS; 0: a free port).", check=_port, fix="a TCP port 0-65535")
    sync_poll_s: float = setting(5.0, "Seconds the coordinator waits after a box answered before asking it again (each ask starts a ClientApp process on the box).", check=_positive, fix="seconds > 0, e.g. 5")
    sync_reply_timeout_s: float = setting(120.0, "Seconds the coordinator waits for a box's answer before asking again (a dropped link loses the ask; the box's outbox keeps the update).", check=_positive, fix="seconds > 0, e.g. 120")
    sync_renew_days: int = setting(7, "A box asks the coordinator for a renewed certificate at sync once its certificate has this many days left or fewer (the coordinator's authority issues it; 0: never, renew offline with a new kit).", check=lambda v: 0 <= v <= 30, fix="days 0-30, e.g. 7")
    sync_admit_every_s: float = setting(10.0, "Seconds between the coordinator's reads of the authority's issued and revoked certificates (a revoked box is unregistered at the SuperLink within this time).", check=_positive, fix="seconds > 0, e.g. 10")

    # The coordinator's aggregation rule (sync.coordinator.strategy: FedBuff-style, buffered and asynchronous).
    sync_buffer_k: int = setting(3, "The coordinator aggregates as soon as this many distinct admissible encrypted updates wait (FedBuff's K).", check=_positive, fix="an integer >= 1")
    sync_deadline_s: float = setting(21600.0, "...or once the oldest waiting update has waited this many seconds, if at least sync_min_updates wait, so a quiet week still yields a model.", check=_positive, fix="seconds > 0, e.g. 21600")
    sync_min_updates: int = setting(1, "Fewest updates a deadline round aggregates (at most sync_buffer_k). More hides each clinic's update in a larger mean.", check=_positive, fix="an integer >= 1, at most sync_buffer_k")
    sync_max_staleness: int = setting(4, "Most global model generations an update's base model may lag behind the current one; an older update is rejected and its box told why.", check=lambda v: v >= 0, fix="an integer >= 0")
    sync_staleness_exponent: float = setting(0.5, "Staleness weighting: an update s generations behind counts (1 + s) ** -exponent times its example count (0.5: 1/sqrt(1+s); 0: no discount).", check=lambda v: v >= 0, fix="a number >= 0, e.g. 0.5")

    # Derived paths: one place decides where things live under home.
    @property
    def models_dir(self) -> Path:
        """Model releases received from the coordinator (shipped ones stay in models/release)."""
        return self.home / "models"

    @property
    def db_path(self) -> Path:
        return self.home / "box.sqlite3"

    @property
    def dicom_spool_dir(self) -> Path:
        """Where the DICOM receiver writes each incoming dataset while it arrives (0700); partial ones are removed at start,
        acknowledged ones wait in ``accepted/`` until ingested."""
        return self.home / "spool"

    @property
    def keystore_path(self) -> Path:
        return self.home / "keystore.json"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @classmethod
    def load(cls, config: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults < TOML < environment < explicit overrides; raises SettingsError naming the field."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        home = Path(env.get(ENV_PREFIX + "HOME", overrides.get("home", DEFAULT_HOME)))
        config = config or (Path(env[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in env else home / "mammo.toml")
        kit_settings = home / "provisioning" / "settings.toml"  # an installed startup kit's initial settings: under mammo.toml
        if kit_settings.exists():
            values.update(_read_toml(kit_settings))
        if config.exists():
            values.update(_read_toml(config))
        for f in dataclasses.fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                values[f.name] = env[key]
        values.update(overrides)
        values["home"] = values.get("home", home)
        return cls.from_mapping(values, source=str(config))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> Settings:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"Unknown setting(s) {', '.join(unknown)} in {source}. Fix: remove them or check the spelling against `mammo settings`.")
        kwargs = {name: _coerce(known[name], raw) for name, raw in values.items()}
        return cls(**kwargs)

    def public_dict(self) -> dict[str, Any]:
        """All fields as JSON-friendly values, secrets masked."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and v else (str(v) if isinstance(v, Path) else v)
        return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"Cannot read settings file {path}: {exc}. Fix the TOML syntax or remove the file to use defaults.") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise SettingsError(f"Unknown section [{key}] in {path}. Fix: use one of {', '.join(SECTIONS)}.")
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _base_type(f: dataclasses.Field[Any]) -> type:
    hint = typing.get_type_hints(Settings)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.cast(type, hint)


def _coerce(f: dataclasses.Field[Any], raw: Any) -> Any:
    typ = _base_type(f)
    env_name = ENV_PREFIX + f.name.upper()
    where = f"Setting '{f.name}' (env {env_name})"
    if raw is None:
        if f.default is None:
            return None
        raise SettingsError(f"{where} may not be empty. Fix: give {f.metadata.get('fix') or 'a value'}.")
    try:
        if typ is bool and isinstance(raw, str):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            value: Any = raw.lower() in {"1", "true", "yes", "on"}
        elif typ is bool:
            if not isinstance(raw, bool):
                raise ValueError(raw)
            value = raw
        elif typ is Path:
            value = Path(raw).expanduser()
        else:
            value = typ(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{where} must be of type {typ.__name__}, got {raw!r}. Fix: give {f.metadata.get('fix') or typ.__name__}.") from None
    check = f.metadata.get("check")
    if check is not None and not check(value):
        raise SettingsError(f"{where} has invalid value {raw!r}. Fix: give {f.metadata['fix']}.")
    return value
