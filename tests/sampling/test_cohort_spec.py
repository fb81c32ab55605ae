"""Cohort bookkeeping without generation: spec checks, the patient plan and its seeds, ranks, the folder, the manifest."""

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers import BUNDLE
from scripts.sampling.cohort_files import (
    PATIENT_RECORD_KEYS,
    open_cohort,
    read_patient_record,
    write_manifest,
    write_patient_record,
)
from scripts.sampling.cohort_spec import CohortSpec, patients_of_rank, plan_cohort, rank_and_world, read_spec

SPEC = {
    "patients": 200,
    "seed": 7,
    "tumor": {"diameter_mm": {"min": 12.5, "max": 40}, "left_share": 0.3},
    "unconditional_share": 0.25,
    "formats": ["nifti"],
    "max_attempts": 3,
    "num_inference_steps": 10,
    "id_prefix": "TRIAL-A",
}


def spec_file(tmp_path, content, name="spec.yaml"):
    """Write `content` as a YAML (or, by name, JSON) spec file and return its path."""
    path = tmp_path / name
    path.write_text(json.dumps(content) if name.endswith(".json") else yaml.safe_dump(content))
    return path


def with_value(place: str, value) -> dict:
    """SPEC with the dotted key `place` set to `value`."""
    spec = json.loads(json.dumps(SPEC))
    *parents, last = place.split(".")
    node = spec
    for key in parents:
        node = node[key]
    node[last] = value
    return spec


def record(plan, quality="pass") -> dict:
    """A patient record as the generation code writes it, with values derived from the plan."""
    tumor = plan.tumor
    return {
        "patient_id": plan.patient_id,
        "seed": plan.seeds(2)[1],
        "attempts": 2,
        "rejected_seeds": plan.seeds(1),
        "tumor_side": tumor.side if tumor else None,
        "tumor_diameter_mm": tumor.diameter_mm if tumor else None,
        "tumor_volume_ml": 1.25 if tumor else None,
        "quality": quality,
        "files": [f"{plan.patient_id}/ct.nii.gz", f"{plan.patient_id}/dicom"],
    }


def test_yaml_and_json_specs_read_alike_and_round_trip(tmp_path):
    from_yaml = read_spec(spec_file(tmp_path, SPEC))
    assert read_spec(str(spec_file(tmp_path, SPEC, "spec.json"))) == from_yaml
    assert (
        from_yaml.diameter_mm == (12.5, 40.0) and from_yaml.formats == ("nifti",) and from_yaml.id_prefix == "TRIAL-A"
    )
    assert read_spec(spec_file(tmp_path, from_yaml.to_dict(), "again.json")) == from_yaml
    json.dumps(from_yaml.to_dict(), allow_nan=False)


def test_defaults_and_a_fixed_diameter(tmp_path):
    spec = read_spec(spec_file(tmp_path, {"patients": 3, "tumor": {"diameter_mm": 30}}))
    assert spec == CohortSpec(patients=3, diameter_mm=(30.0, 30.0))
    assert (spec.seed, spec.left_share, spec.unconditional_share, spec.max_attempts) == (0, 0.5, 0.0, 5)
    assert spec.formats == ("nifti", "dicom") and spec.num_inference_steps is None and spec.id_prefix == "SYN"
    assert {p.tumor.diameter_mm for p in plan_cohort(spec)} == {30.0}


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({k: v for k, v in SPEC.items() if k != "patients"}, "patients"),
        ({**SPEC, "patient": 3}, "patient"),
        (with_value("tumor.side", "left"), "tumor.side"),
        (with_value("tumor.diameter_mm.mean", 30), "tumor.diameter_mm.mean"),
        (with_value("patients", 0), "patients"),
        (with_value("patients", True), "patients"),
        (with_value("patients", 2.0), "patients"),
        (with_value("seed", -1), "seed"),
        (with_value("seed", 2**63), "seed"),
        (with_value("max_attempts", 0), "max_attempts"),
        (with_value("num_inference_steps", 0), "num_inference_steps"),
        (with_value("tumor.diameter_mm.min", 4), "tumor.diameter_mm.min"),
        (with_value("tumor.diameter_mm.max", 101), "tumor.diameter_mm.max"),
        (with_value("tumor.diameter_mm.min", "10"), "tumor.diameter_mm.min"),
        (with_value("tumor.diameter_mm.min", 50), "tumor.diameter_mm.min"),
        (with_value("tumor.diameter_mm", {"min": 10}), "tumor.diameter_mm.max"),
        (with_value("tumor.diameter_mm", 120), "tumor.diameter_mm"),
        (with_value("tumor", [1]), "tumor"),
        (with_value("tumor.left_share", 1.5), "tumor.left_share"),
        (with_value("unconditional_share", -0.1), "unconditional_share"),
        (with_value("unconditional_share", False), "unconditional_share"),
        (with_value("formats", ["dicom"]), "formats"),
        (with_value("formats", ["nifti", "png"]), "formats"),
        (with_value("formats", "nifti"), "formats"),
        (with_value("id_prefix", "SYN_1"), "id_prefix"),
        (with_value("id_prefix", ""), "id_prefix"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_file_and_key(tmp_path, content, key):
    path = spec_file(tmp_path, content)
    with pytest.raises(ValueError, match=r"cohort spec .*spec\.yaml: ") as refused:
        read_spec(path)
    assert key in str(refused.value)


def test_an_unknown_key_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="allowed under tumor: diameter_mm, left_share"):
        read_spec(spec_file(tmp_path, with_value("tumor.size", 3)))


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("absent.yaml", None, "cannot read it"),
        ("list.yaml", "- 1\n- 2\n", "the spec must be a mapping, got \\[1, 2\\]"),
        ("empty.yml", "", "the spec must be a mapping, got None"),
        ("broken.yaml", "patients: [1\n", "not valid YAML"),
        ("broken.json", "{", "not valid JSON"),
        ("spec.toml", "patients = 3\n", "must be a .yaml, .yml or .json file"),
    ],
)
def test_a_missing_or_malformed_file_is_refused_naming_it(tmp_path, name, text, problem):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=f"cohort spec {re.escape(str(path))}: {problem}"):
        read_spec(path)


def test_the_plan_has_exact_counts_and_diameters_in_range(tmp_path):
    spec = read_spec(spec_file(tmp_path, SPEC))
    plans = plan_cohort(spec)
    sides = Counter(p.tumor.side if p.tumor else None for p in plans)
    assert sides == {None: 50, "left": 45, "right": 105}  # round(0.25 * 200), round(0.3 * 150)
    diameters = [p.tumor.diameter_mm for p in plans if p.tumor]
    assert all(12.5 <= d <= 40.0 and round(d, 1) == d for d in diameters)
    assert min(diameters) < 15 and max(diameters) > 37, "diameters spread over the range"
    assert [p.index for p in plans] == list(range(200))
    assert [p.patient_id for p in plans[:2]] + [plans[-1].patient_id] == [
        "TRIAL-A-0001",
        "TRIAL-A-0002",
        "TRIAL-A-0200",
    ]
    assert [p.tumor is None for p in plans[:50]] != [True] * 50, "the unconditional patients are shuffled in"


def test_the_plan_depends_on_the_spec_alone(tmp_path):
    spec = read_spec(spec_file(tmp_path, SPEC))
    assert plan_cohort(spec) == plan_cohort(read_spec(spec_file(tmp_path, SPEC, "same.json")))
    other = plan_cohort(read_spec(spec_file(tmp_path, with_value("seed", 8))))
    assert [p.tumor for p in other] != [p.tumor for p in plan_cohort(spec)]


def test_seeds_are_unique_across_patients_and_attempts(tmp_path):
    spec = read_spec(spec_file(tmp_path, SPEC))
    plans = plan_cohort(spec)
    seeds = [s for p in plans for s in p.seeds(spec.max_attempts)]
    assert len(seeds) == len(set(seeds)) == 200 * 3
    assert plans[3].seeds(3) == [7 + 3, 7 + 3 + 200, 7 + 3 + 400]
    assert plans[3].seeds(5)[:3] == plans[3].seeds(3), "more attempts keep the earlier seeds"
    with pytest.raises(ValueError, match="max_attempts"):
        plans[0].seeds(0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_plan_whole_and_disjoint(tmp_path, world_size):
    plans = plan_cohort(read_spec(spec_file(tmp_path, with_value("patients", 11))))
    shares = [patients_of_rank(plans, rank, world_size) for rank in range(world_size)]
    assert sorted((p for share in shares for p in share), key=lambda p: p.index) == plans
    assert sum(len(share) for share in shares) == len(plans)
    assert all(p.index % world_size == rank for rank, share in enumerate(shares) for p in share)


@pytest.mark.parametrize(("rank", "world_size", "key"), [(2, 2, "rank"), (-1, 2, "rank"), (0, 0, "world_size")])
def test_a_bad_rank_is_refused(rank, world_size, key):
    with pytest.raises(ValueError, match=f"^{key} must"):
        patients_of_rank([], rank, world_size)


def test_rank_and_world_read_torchrun_variables(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert rank_and_world() == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        rank_and_world()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="^RANK must be within 0-1"):
        rank_and_world()


def test_open_cohort_creates_then_resumes(tmp_path):
    spec = read_spec(spec_file(tmp_path, SPEC))
    out = tmp_path / "cohorts" / "trial"
    open_cohort(out, spec)
    written = json.loads((out / "cohort.json").read_text())
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert written == {**spec.to_dict(), "version": version}
    (out / "TRIAL-A-0001").mkdir()
    open_cohort(out, read_spec(spec_file(tmp_path, SPEC, "same.json")))
    assert sorted(p.name for p in out.iterdir()) == ["TRIAL-A-0001", "cohort.json"]
    assert json.loads((out / "cohort.json").read_text()) == written


def test_open_cohort_refuses_another_spec_naming_the_key(tmp_path):
    out = tmp_path / "trial"
    open_cohort(out, read_spec(spec_file(tmp_path, SPEC)))
    other = read_spec(spec_file(tmp_path, with_value("tumor.left_share", 0.6)))
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(out))} holds another cohort .*tumor\.left_share \(0\.3 in the folder, 0\.6 in",
    ):
        open_cohort(out, other)
    assert json.loads((out / "cohort.json").read_text())["tumor"]["left_share"] == 0.3, "the folder's file is kept"


def test_open_cohort_refuses_a_folder_with_stray_files(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))} holds files but no cohort.json \(notes.txt\)"):
        open_cohort(out, read_spec(spec_file(tmp_path, SPEC)))
    assert not (out / "cohort.json").exists()
    (out / "notes.txt").unlink()
    (out / ".cohort.json.0123abcd.tmp").write_text("{")  # another rank's cohort.json, not yet in place
    open_cohort(out, read_spec(spec_file(tmp_path, SPEC)))
    assert (out / "cohort.json").exists()


def test_open_cohort_compares_with_a_file_another_rank_published(tmp_path, monkeypatch):
    out = tmp_path / "race"
    spec = read_spec(spec_file(tmp_path, SPEC))
    open_cohort(out, spec)
    monkeypatch.setattr(Path, "exists", lambda self: False)  # as if cohort.json appeared after the check
    open_cohort(out, spec)
    with pytest.raises(ValueError, match="holds another cohort .*seed"):
        open_cohort(out, read_spec(spec_file(tmp_path, with_value("seed", 1))))
    monkeypatch.undo()
    assert json.loads((out / "cohort.json").read_text())["seed"] == 7, "never overwritten"
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json"], "no temporary file left"


def test_patient_records_round_trip_and_are_checked(tmp_path):
    plan = plan_cohort(read_spec(spec_file(tmp_path, SPEC)))[0]
    folder = tmp_path / plan.patient_id
    folder.mkdir()
    assert read_patient_record(folder) is None
    write_patient_record(folder, record(plan))
    assert read_patient_record(folder) == record(plan)
    with pytest.raises(ValueError, match="unknown: \\['extra'\\]"):
        write_patient_record(folder, {**record(plan), "extra": 1})
    (folder / "patient.json").write_text('{"patient_id": ')
    with pytest.raises(ValueError, match=f"{folder / 'patient.json'}: corrupt patient record"):
        read_patient_record(folder)


def test_the_manifest_lists_every_record_in_plan_order(tmp_path):
    plans = plan_cohort(read_spec(spec_file(tmp_path, with_value("patients", 8))))
    out = tmp_path / "cohort"
    for plan in reversed(plans):
        (out / plan.patient_id).mkdir(parents=True)
        write_patient_record(out / plan.patient_id, record(plan, "fail: no left lung" if plan.index == 5 else "pass"))
    path = write_manifest(out, plans)
    assert path == out / "manifest.csv"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == PATIENT_RECORD_KEYS
    assert [r["patient_id"] for r in rows] == [p.patient_id for p in plans]
    first = plans[0]
    assert rows[0]["rejected_seeds"] == str(first.seeds(1)[0]) and rows[0]["seed"] == str(first.seeds(2)[1])
    assert rows[0]["files"] == f"{first.patient_id}/ct.nii.gz;{first.patient_id}/dicom"
    assert rows[5]["quality"] == "fail: no left lung" and rows[4]["quality"] == "pass"
    unconditional = next(r for r, p in zip(rows, plans, strict=True) if p.tumor is None)
    assert (unconditional["tumor_side"], unconditional["tumor_diameter_mm"], unconditional["tumor_volume_ml"]) == (
        "",
    ) * 3
    tumor = next(p for p in plans if p.tumor)
    assert rows[tumor.index]["tumor_diameter_mm"] == str(tumor.tumor.diameter_mm)


def test_the_manifest_refuses_unfinished_patients(tmp_path):
    plans = plan_cohort(read_spec(spec_file(tmp_path, with_value("patients", 4))))
    out = tmp_path / "cohort"
    for plan in plans[::2]:
        (out / plan.patient_id).mkdir(parents=True)
        write_patient_record(out / plan.patient_id, record(plan))
    with pytest.raises(ValueError, match="2 of 4 patients are unfinished: TRIAL-A-0002, TRIAL-A-0004$"):
        write_manifest(out, plans)
    assert not (out / "manifest.csv").exists()


def test_the_demo_spec_plans_one_unconditional_and_tumors_in_both_lungs():
    spec = read_spec(BUNDLE / "configs" / "cohort_demo.yaml")
    plans = plan_cohort(spec)
    assert len(plans) == 6 and spec.formats == ("nifti", "dicom") and spec.seed == 0
    assert sum(p.tumor is None for p in plans) == 1
    assert Counter(p.tumor.side for p in plans if p.tumor) == {"left": 2, "right": 3}
    assert all(20.0 <= p.tumor.diameter_mm <= 60.0 for p in plans if p.tumor)
