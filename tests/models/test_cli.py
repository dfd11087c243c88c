"""``mammo eval`` and ``mammo bench infer`` through their handlers."""

from __future__ import annotations

import json

import pytest

from models.cli import main


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_eval_on_a_small_folder_prints_one_json_line(release_dir, synthetic_folder, capsys):
    folder = synthetic_folder(4)
    assert main(["eval", "--images", str(folder), "--json", "--release", str(release_dir)]) == 0
    res = _last_json(capsys)
    assert res["n_images"] == 8 and res["n_women"] == 4
    for key in ("auc_abnormal", "auc_abnormal_ci95", "auc_malignant", "sens_at_90spec", "sens_at_90spec_ci95"):
        assert key in res
    assert sum(res["triage_counts"].values()) == 8


def test_eval_on_a_folder_of_the_wrong_shape_is_a_usage_error(release_dir, tmp_path, capsys):
    assert main(["eval", "--images", str(tmp_path), "--json", "--release", str(release_dir)]) == 2
    assert "images.csv" in capsys.readouterr().err


def test_eval_with_a_missing_release_is_a_runtime_error(synthetic_folder, tmp_path, capsys):
    folder = synthetic_folder(1)
    assert main(["eval", "--images", str(folder), "--json", "--release", str(tmp_path / "none")]) == 1
    assert "manifest.json" in capsys.readouterr().err


def test_bench_infer_prints_all_four_side_by_side(release_dir, capsys):
    assert main(["bench", "infer", "--json", "-n", "4", "--release", str(release_dir)]) == 0
    res = _last_json(capsys)
    assert {"pytorch_fp32_eager", "onnx_fp32", "onnx_int8", "tflite_int8"} <= set(res["latency"])
    assert res["threads"] == 2 and res["batch"] == 1
    assert res["ratio_onnx_int8_vs_pytorch_fp32"]["size"] < 1


def test_train_with_a_bad_data_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--json"]) == 2


@pytest.mark.parametrize("argv", [["eval"], ["bench"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
