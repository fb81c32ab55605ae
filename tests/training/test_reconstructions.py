"""Reconstructions beside the originals, and a segmenter fine-tuned on both from its trained weights."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY, train_in_process, training_overrides
from scripts.data.volumes import to_hu
from scripts.evaluation.segmentation import working_cases
from scripts.networks.checkpoint import load_checkpoint
from scripts.networks.loading import load_autoencoder, trainable_segmenter
from scripts.training.engines import ReconstructionInferer
from scripts.training.reconstructions import write_reconstructions


@pytest.fixture(scope="module")
def reconstructions(trained, phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reconstructions")
    write_reconstructions(str(phantom_dir), str(trained.dir / "autoencoder.pt"), str(out))
    return out


def test_each_case_comes_with_its_reconstruction_and_label(reconstructions, phantom_dir, trained):
    listed = json.loads((phantom_dir / "datalist.json").read_text())
    combined = json.loads((reconstructions / "datalist.json").read_text())
    assert set(combined) == set(listed)
    for split, items in listed.items():
        assert [i["case"] for i in combined[split]] == [
            n for i in items for n in (i["case"], f"{i['case']}-reconstructed")
        ]
    autoencoder = load_autoencoder(trained.dir / "autoencoder.pt")
    for name, hu, label in working_cases(phantom_dir / "datalist.json", TINY["grid_size"]):
        written = nib.load(reconstructions / f"{name}-reconstructed" / "ct.nii.gz")
        assert written.shape == (TINY["grid_size"],) * 3 and written.get_data_dtype() == np.int16
        scaled = torch.as_tensor(np.clip(hu, -1000, 1000) / 1000, dtype=torch.float32)[None, None]
        with torch.no_grad():
            expected = to_hu(ReconstructionInferer()(scaled, autoencoder)[0, 0], [-1000, 1000])
        assert np.abs(np.asanyarray(written.dataobj).astype(int) - expected).max() <= 1, name
        assert not np.array_equal(expected, hu), "a reconstruction, not a copy"
        written_label = np.asanyarray(nib.load(reconstructions / f"{name}-reconstructed" / "label.nii.gz").dataobj)
        assert np.array_equal(written_label, label), name


def test_reconstructions_resume_and_keep_what_is_written(reconstructions, phantom_dir, trained):
    kept = reconstructions / "PHANTOM-001-reconstructed" / "ct.nii.gz"
    stamp = kept.stat().st_mtime_ns
    redone = reconstructions / "PHANTOM-002-reconstructed" / "ct.nii.gz"
    redone.unlink()
    write_reconstructions(str(phantom_dir), str(trained.dir / "autoencoder.pt"), str(reconstructions))
    assert kept.stat().st_mtime_ns == stamp and redone.is_file()
    with pytest.raises(FileNotFoundError, match="no datalist.json"):
        write_reconstructions(
            str(reconstructions / "PHANTOM-001-reconstructed"), str(trained.dir / "autoencoder.pt"), "x"
        )


def test_a_broken_case_is_reported_and_the_others_go_on(phantom_dir, trained, tmp_path, caplog):
    listed = json.loads((phantom_dir / "datalist.json").read_text())
    broken = {"case": "BROKEN", "image": "BROKEN/ct.nii.gz", "label": "BROKEN/label.nii.gz"}
    data = tmp_path / "data"
    data.mkdir()
    (data / "BROKEN").mkdir()
    (data / "BROKEN" / "ct.nii.gz").write_bytes(b"not a NIfTI")
    first = {**listed["training"][0], **{k: str(phantom_dir / listed["training"][0][k]) for k in ("image", "label")}}
    unlabelled = {"case": "UNLABELLED", "image": first["image"]}
    (data / "datalist.json").write_text(json.dumps({"training": [first, broken, unlabelled]}))
    write_reconstructions(str(data), str(trained.dir / "autoencoder.pt"), str(tmp_path / "out"))
    combined = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert [i["case"] for i in combined["training"]] == [first["case"], f"{first['case']}-reconstructed"]
    assert "2 cases failed" in caplog.text and "BROKEN/ct.nii.gz" in caplog.text and "no label map" in caplog.text
    assert not (tmp_path / "out" / "BROKEN-reconstructed").exists()


def test_a_folder_of_another_autoencoder_is_refused(reconstructions, phantom_dir, trained, tmp_path):
    other = tmp_path / "other.pt"
    checkpoint = load_checkpoint(trained.dir / "autoencoder.pt", ("autoencoder", "autoencoder_record"))
    checkpoint["autoencoder"] = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint["autoencoder"].items()}
    torch.save(checkpoint, other)
    kept = {p: p.stat().st_mtime_ns for p in reconstructions.rglob("*.nii.gz")}
    with pytest.raises(FileExistsError, match="another autoencoder"):
        write_reconstructions(str(phantom_dir), str(other), str(reconstructions))
    assert {p: p.stat().st_mtime_ns for p in reconstructions.rglob("*.nii.gz")} == kept


def test_segmenter_fine_tunes_from_its_weights_on_reconstructions(reconstructions, trained, tmp_path):
    init = trained.dir / "segmentation.pt"
    overrides = {
        **training_overrides(reconstructions, tmp_path),
        "max_epochs": 1,
        "segmentation_init_filters": 8,
        "segmentation_init_path": str(init),
    }
    initial = train_in_process(["train_segmentation.json", "demo.json"], "network", overrides)
    start = load_checkpoint(init, ("segmentation",))["segmentation"]
    assert all(torch.equal(initial[k], v) for k, v in start.items())
    tuned = load_checkpoint(tmp_path / "segmentation.pt", ("segmentation",))["segmentation"]
    assert any(not torch.equal(tuned[k], v) for k, v in start.items() if v.is_floating_point())
    kwargs = {**load_checkpoint(init, ("segmentation_record",))["segmentation_record"]["network"], "init_filters": 16}
    with pytest.raises(ValueError, match="segmentation_init_path"):
        trainable_segmenter(kwargs, init)
