"""Research exports through real `mammo deid` processes: the date shifts are the export's own too.

Three women, so a chance equality of one shift (1 in ingest_date_shift_max_days)
cannot pass for linkability or hide it: the test compares the three shifts together.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pydicom

from edge_agent.ingest import mg
from edge_agent.ingest.deid import DeidKeys, patient_key, shift_days_for
from edge_agent.settings import Settings
from provisioning.keystore import FileKeystore
from tests.edge_agent.ingest.test_data_at_rest import mammo

ENV = {"MAMMO_KEYSTORE_PASSPHRASE": "export test", "MAMMO_KEYSTORE_TPM": "off"}
DATE = "20260315"


def _days(a: str, b: str) -> int:
    return (dt.datetime.strptime(a, "%Y%m%d") - dt.datetime.strptime(b, "%Y%m%d")).days


def _export(home: Path, usb: Path, dst: Path, *extra: str) -> dict[str, tuple[int, str, str]]:
    """Per source file: (date shift, pseudonym, study UID) as the export wrote them."""
    r = mammo(home, "deid", str(usb), str(dst), *extra, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    out = {}
    for row in json.loads(r.stdout.strip().splitlines()[-1])["results"]:
        ds = pydicom.dcmread(row["dst"])
        out[Path(row["src"]).name] = (_days(DATE, str(ds.StudyDate)), str(ds.PatientID), str(ds.StudyInstanceUID))
    return out


def test_exports_shift_dates_by_their_own_key_not_the_boxs(tmp_path: Path):
    home, usb = tmp_path / "home", tmp_path / "usb"
    originals = {}
    for i, patient in enumerate(mg.TURKISH_PATIENTS[:3]):
        ds = mg.screening_study(patient, seed=i, size=64, study_date=DATE)[0]
        mg.write(ds, usb / f"W{i}.dcm")
        originals[f"W{i}.dcm"] = ds
    r = mammo(home, "ingest", str(usb), "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    settings = Settings.load(env={"MAMMO_HOME": str(home)})
    box_keys = DeidKeys.from_keystore(FileKeystore.open(settings.keystore_path, ENV["MAMMO_KEYSTORE_PASSPHRASE"]), settings.ingest_date_shift_max_days)
    box = {name: shift_days_for(box_keys, patient_key(ds)) for name, ds in originals.items()}

    first, second = _export(home, usb, tmp_path / "a"), _export(home, usb, tmp_path / "b")
    shifts = [{n: v[0] for n, v in e.items()} for e in (first, second)]
    assert all(0 < s <= settings.ingest_date_shift_max_days for s in shifts[0].values())
    assert shifts[0] != box and shifts[1] != box and shifts[0] != shifts[1]
    assert not {v[1] for v in first.values()} & {v[1] for v in second.values()}  # no pseudonym in common
    assert not {v[2] for v in first.values()} & {v[2] for v in second.values()}  # nor a study UID

    kept = _export(home, usb, tmp_path / "c", "--keep-key", str(tmp_path / "k"))
    assert _export(home, usb, tmp_path / "d", "--key", str(tmp_path / "k")) == kept  # a kept key reproduces the mapping
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
