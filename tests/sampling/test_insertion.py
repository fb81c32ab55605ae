"""Tumor insertion into a patient's own CT (configs/insert_tumor.json) with the demo weights, on held-out phantoms.

The phantoms (seed 99) are not among the demo's training cases (seed 0); at 160 x 160 x 80 their voxels are 2.8 mm
in-plane and about 3.3 mm apart, a clinical CT's order, on another grid than the model's (3.5 x 3.5 x 2.75 mm).
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from scipy import ndimage

from helpers import run_bundle
from scripts.data.labels import LABELS
from scripts.dicom.ct_folder import read_ct_folder
from scripts.networks.loading import load_autoencoder, load_controlnet, load_diffusion
from scripts.phantoms.dicom_tree import write_phantom_dicom
from scripts.phantoms.thorax import write_phantoms
from scripts.sampling.blending import voxel_spacing
from scripts.sampling.inpainting import inpaint, path_coefficients
from scripts.sampling.insertion import insert_tumor as bundle_insert_tumor
from scripts.sampling.patient_ct import read_patient_ct
from scripts.sampling.sampler import LatentDiffusionSampler

DEMO = Path(__file__).resolve().parents[2] / "bundle" / "models" / "demo"
SIZE = [160, 160, 80]
MARGIN_MM = 10.0


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> Path:
    """A held-out phantom's folder (ct.nii.gz, label.nii.gz)."""
    root = tmp_path_factory.mktemp("held_out")
    write_phantoms(str(root), n=1, size=SIZE, seed=99)
    return root / "PHANTOM-001"


@pytest.fixture(scope="module")
def sampler() -> LatentDiffusionSampler:
    """The demo weights' tumor sampler as configs/insert_tumor.json builds it (the model's default sampler, guidance 3)."""
    diffusion, controlnet = load_diffusion(DEMO / "diffusion.pt"), load_controlnet(DEMO / "controlnet.pt")
    autoencoder = load_autoencoder(DEMO / "autoencoder.pt")
    record = diffusion.record
    return LatentDiffusionSampler(
        autoencoder, diffusion.network, record, "auto", None, "cpu", controlnet.network, guidance_scale=3.0
    )


def insert_tumor(sampler, image, output_dir, *args, **kwargs) -> dict:
    """The bundle's insert_tumor on the CT at `image`, read as configs/insert_tumor.json's dataset reads it."""
    return bundle_insert_tumor(sampler, read_patient_ct(image), output_dir, *args, **kwargs)


def lung_centre(patient: Path, side: int) -> list[float]:
    """World centre (RAS mm) of the phantom's lung on one side (+1: the patient's right, +x in RAS)."""
    image = nib.load(patient / "label.nii.gz")
    voxels = np.argwhere(np.asanyarray(image.dataobj) == LABELS["lungs"])
    world = voxels @ image.affine[:3, :3].T + image.affine[:3, 3]
    return world[world[:, 0] * side > 0].mean(0).round(1).tolist()


def far_from(mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels farther than `margin_mm` from the mask."""
    return ndimage.distance_transform_edt(~mask, sampling=voxel_spacing(affine)) > margin_mm


@pytest.fixture(scope="module")
def inserted(tmp_path_factory, patient, sampler) -> dict:
    """A 40 mm tumor in the right lung, then in the left, of the held-out phantom; per side its output folder."""
    outputs = {}
    for side, sign in (("right", 1), ("left", -1)):
        out = tmp_path_factory.mktemp(side)
        insert_tumor(sampler, str(patient / "ct.nii.gz"), str(out), lung_centre(patient, sign), 40.0, seed=3)
        outputs[side] = out
    return outputs


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_40_mm_tumor_turns_the_lung_under_its_mask_into_soft_tissue(patient, inserted, side):
    before = nib.load(patient / "ct.nii.gz")
    after = nib.load(inserted[side] / "PHANTOM-001_ct.nii.gz")
    gtv = np.asanyarray(nib.load(inserted[side] / "PHANTOM-001_gtv.nii.gz").dataobj) > 0
    hu_before, hu_after = np.asanyarray(before.dataobj), np.asanyarray(after.dataobj)
    was_lung = gtv & (hu_before < -400)
    assert was_lung.sum() > 0.8 * gtv.sum(), "the requested place is lung in the input"
    share = (hu_after[was_lung] > -300).mean()
    assert share >= 0.6, f"{side}: {share:.2f} of the mask's lung voxels became soft tissue"
    report = json.loads((inserted[side] / "PHANTOM-001_report.json").read_text())
    assert report["mask_soft_tissue_fraction_where_lung"] == pytest.approx(share)
    assert 20 < report["mask_volume_ml"] < 50, "about a 40 mm sphere (33.5 ml)"


@pytest.mark.parametrize("side", ["right", "left"])
def test_everything_beyond_the_margin_is_the_input_and_the_geometry_is_kept(patient, inserted, side):
    before = nib.load(patient / "ct.nii.gz")
    after = nib.load(inserted[side] / "PHANTOM-001_ct.nii.gz")
    gtv = np.asanyarray(nib.load(inserted[side] / "PHANTOM-001_gtv.nii.gz").dataobj) > 0
    assert after.shape == before.shape and np.allclose(after.affine, before.affine)
    assert after.get_data_dtype() == np.int16
    hu_before, hu_after = np.asanyarray(before.dataobj), np.asanyarray(after.dataobj)
    far = far_from(gtv, before.affine, MARGIN_MM)
    assert np.array_equal(hu_after[far], hu_before[far])
    near = ~far & ~gtv
    assert (hu_after[near] != hu_before[near]).any(), "the margin blends"
    report = json.loads((inserted[side] / "PHANTOM-001_report.json").read_text())
    assert report["unchanged_fraction_outside_margin"] == 1.0
    assert report["boundary_hu_step"] < 2.0 * report["boundary_hu_step_input"], report
    assert (inserted[side] / "PHANTOM-001_preview.png").stat().st_size > 10_000


def test_the_same_seed_gives_the_same_ct_and_another_seed_another(patient, inserted, sampler, tmp_path):
    centre = lung_centre(patient, 1)
    image = str(patient / "ct.nii.gz")
    insert_tumor(sampler, image, str(tmp_path / "again"), centre, 40.0, seed=3)
    insert_tumor(sampler, image, str(tmp_path / "other"), centre, 40.0, seed=4)
    first, again, other = (
        np.asanyarray(nib.load(folder / "PHANTOM-001_ct.nii.gz").dataobj)
        for folder in (inserted["right"], tmp_path / "again", tmp_path / "other")
    )
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_an_lps_nifti_gets_the_same_tumor_as_its_ras_twin(patient, inserted, sampler, tmp_path):
    """The same CT stored with flipped x and y axes (LPS voxel order) and the right run's GTV as `mask`."""
    ras = nib.load(patient / "ct.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.asarray(ras.shape[:2]) - 1
    lps_affine = ras.affine @ flip
    lps_hu = np.asanyarray(ras.dataobj)[::-1, ::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lps_hu), lps_affine), tmp_path / "lps_ct.nii.gz")
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    gtv = str(inserted["right"] / "PHANTOM-001_gtv.nii.gz")
    insert_tumor(sampler, str(tmp_path / "lps_ct.nii.gz"), str(tmp_path / "out"), mask=gtv, seed=3)
    out = nib.load(tmp_path / "out" / "lps_ct.nii.gz")
    assert np.allclose(out.affine, lps_affine)
    expected = np.asanyarray(nib.load(inserted["right"] / "PHANTOM-001_ct.nii.gz").dataobj)
    difference = np.abs(np.asanyarray(out.dataobj)[::-1, ::-1].astype(int) - expected)
    assert difference.max() <= 1, "the same voxels, up to rounding"


def test_the_bundle_command_inserts_into_a_dicom_series_and_keeps_its_patient_and_frame(tmp_path):
    write_phantom_dicom(str(tmp_path / "dicom"), n=1, size=[128, 128, 64], seed=99)
    series = next(p for p in (tmp_path / "dicom").rglob("0.000000-NA-*") if p.is_dir())
    hu, grid, header = read_ct_folder(series)
    centre = (grid.affine_ras @ [*(np.asarray(hu.shape) * [0.3, 0.5, 0.55]), 1.0])[:3].round(1).tolist()
    overrides = {"model_dir": str(DEMO), "image": str(series), "output_dir": str(tmp_path / "out")}
    run_bundle(
        ["insert_tumor.json"], {**overrides, "tumor_center_mm": centre, "tumor_diameter_mm": 30.0, "dicom": True}
    )
    name = series.name
    out = nib.load(tmp_path / "out" / f"{name}_ct.nii.gz")
    assert out.shape == hu.shape and np.allclose(out.affine, grid.affine_ras)
    gtv = np.asanyarray(nib.load(tmp_path / "out" / f"{name}_gtv.nii.gz").dataobj) > 0
    far = far_from(gtv, out.affine, 10.0)
    assert np.array_equal(np.asanyarray(out.dataobj)[far], hu[far])
    label = nib.load(tmp_path / "out" / f"{name}_label.nii.gz")
    assert label.shape == hu.shape and np.allclose(label.affine, grid.affine_ras)
    assert np.array_equal(np.asanyarray(label.dataobj) == LABELS["gtv_1"], gtv), "GTV-1 is the inserted tumor exactly"
    slices = [pydicom.dcmread(p) for p in sorted((tmp_path / "out" / f"{name}_dicom" / "CT").glob("*.dcm"))]
    assert len(slices) == hu.shape[2]
    kept = {"PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "PatientPosition"}
    assert all(getattr(s, k) == getattr(header, k) for s in slices for k in kept)
    assert slices[0].SeriesInstanceUID != header.SeriesInstanceUID
    originals = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.glob("*.dcm")}
    assert not originals & {s.SOPInstanceUID for s in slices}, "new SOP instances"
    rtstruct = pydicom.dcmread(next((tmp_path / "out" / f"{name}_dicom" / "RTSTRUCT").glob("*.dcm")))
    names = {r.ROIName for r in rtstruct.StructureSetROISequence}
    assert {"External", "Lung_L", "Lung_R", "Heart", "SpinalCord", "GTV-1"} <= names, names
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == header.FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == slices[0].SeriesInstanceUID


def test_a_tumor_partly_outside_the_lungs_is_allowed_and_reported(patient, sampler, tmp_path):
    label = nib.load(patient / "label.nii.gz")
    heart = np.argwhere(np.asanyarray(label.dataobj) == LABELS["heart"])
    edge = heart[heart[:, 0].argmax()]  # the heart's border towards the right lung
    centre = (label.affine @ [*edge, 1.0])[:3].tolist()
    report = insert_tumor(sampler, str(patient / "ct.nii.gz"), str(tmp_path), centre, 30.0, seed=1)
    assert 0.0 < report["mask_lung_fraction_before"] < 0.9, report


def _refused(sampler, tmp_path, match, **request):
    """The request fails with an error matching `match`, and its output folder holds nothing."""
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileExistsError, FileNotFoundError), match=match):
        insert_tumor(sampler, output_dir=str(out), **request)
    assert not out.exists() or not any(out.iterdir())


def _mask_file(path: Path, like: nib.Nifti1Image, values: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(values, like.affine), path)
    return str(path)


def test_bad_requests_are_refused_naming_the_parameter_and_write_nothing(patient, sampler, tmp_path):
    image = str(patient / "ct.nii.gz")
    ct = nib.load(image)
    lung = lung_centre(patient, 1)
    air_voxel = [80, 152, 40]  # in front of the chest, inside the image and the model's box
    corner = (ct.affine @ [*air_voxel, 1])[:3].tolist()
    _refused(sampler, tmp_path, "tumor_center_mm .* outside the image", image=image, tumor_center_mm=[900, 0, 0])
    _refused(
        sampler, tmp_path, "tumor_center_mm must be three finite", image=image, tumor_center_mm=[0, float("nan"), 0]
    )
    _refused(sampler, tmp_path, "tumor_center_mm: the tumor lies outside the body", image=image, tumor_center_mm=corner)
    for diameter in (4.0, 101.0):
        _refused(sampler, tmp_path, "tumor_diameter_mm", image=image, tumor_center_mm=lung, tumor_diameter_mm=diameter)
    _refused(sampler, tmp_path, "blend_margin_mm", image=image, tumor_center_mm=lung, blend_margin_mm=80.0)
    _refused(sampler, tmp_path, "not both", image=image, tumor_center_mm=lung, mask=image)
    empty = np.zeros(ct.shape, np.uint8)
    _refused(sampler, tmp_path, "mask .* is empty", image=image, mask=_mask_file(tmp_path / "e.nii.gz", ct, empty))
    grey = empty.copy()
    grey[80, 80, 40] = 2
    _refused(sampler, tmp_path, "mask .* binary", image=image, mask=_mask_file(tmp_path / "g.nii.gz", ct, grey))
    top = empty.copy()
    top[70:90, 70:90, -3:] = 1
    raised = ct.affine.copy()
    raised[2, 3] += 30.0  # the same grid 30 mm higher: the mask's top slices lie above the image
    nib.save(nib.Nifti1Image(top, raised), tmp_path / "b.nii.gz")
    beyond = str(tmp_path / "b.nii.gz")
    _refused(sampler, tmp_path, "mask .* extends beyond the image PHANTOM-001", image=image, mask=beyond)
    air = empty.copy()
    air[76:84, 148:156, 38:42] = 1
    _refused(
        sampler,
        tmp_path,
        "mask: the tumor lies outside the body",
        image=image,
        mask=_mask_file(tmp_path / "a.nii.gz", ct, air),
    )
    _refused(sampler, tmp_path, "image: no file", image=str(tmp_path / "missing.nii.gz"), tumor_center_mm=lung)


def test_a_ct_without_lungs_is_refused(patient, sampler, tmp_path):
    ct, label = nib.load(patient / "ct.nii.gz"), nib.load(patient / "label.nii.gz")
    hu = np.asanyarray(ct.dataobj).copy()
    hu[np.isin(np.asanyarray(label.dataobj), [LABELS["lungs"], LABELS["gtv_1"], LABELS["gtv_other"]])] = 40
    hu[(hu < -300) & ndimage.binary_fill_holes(hu > -300, structure=np.ones((3, 3, 1)))] = 40  # airways too
    nib.save(nib.Nifti1Image(hu, ct.affine), tmp_path / "solid_ct.nii.gz")
    image = str(tmp_path / "solid_ct.nii.gz")
    _refused(sampler, tmp_path, "image: no lungs found in solid", image=image, tumor_center_mm=lung_centre(patient, 1))


def test_an_existing_output_is_kept_without_overwrite(patient, inserted, sampler):
    target = inserted["right"] / "PHANTOM-001_ct.nii.gz"
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        insert_tumor(sampler, str(patient / "ct.nii.gz"), str(inserted["right"]), lung_centre(patient, 1), 40.0)
    assert target.read_bytes() == before


@pytest.mark.parametrize("scheduler", [DDPMScheduler(1000), RFlowScheduler(1000)], ids=["ddpm", "rflow"])
def test_the_forward_path_is_the_schedulers_own(scheduler):
    """alpha_t and sigma_t are what the scheduler's add_noise puts on the clean latent and on the noise."""
    ones, zeros = torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    for t in (1, 250, 999):
        alpha, sigma = path_coefficients(scheduler, t)
        step = torch.tensor([t])
        assert float(scheduler.add_noise(ones, zeros, step)[0, 0, 0, 0, 0]) == pytest.approx(alpha, abs=1e-6)
        assert float(scheduler.add_noise(zeros, ones, step)[0, 0, 0, 0, 0]) == pytest.approx(sigma, abs=1e-6)


@pytest.mark.parametrize("resample_steps", [1, 3])
def test_inpainting_keeps_the_known_latent_where_nothing_is_free(resample_steps):
    scheduler = DDPMScheduler(1000)
    scheduler.set_timesteps(10)
    known = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    free = torch.zeros(1, 1, 4, 4, 4)
    free[..., 1:3, 1:3, 1:3] = 1

    def predictor(x, timesteps):
        return torch.zeros_like(x)

    result = inpaint(predictor, scheduler, known, free, torch.Generator().manual_seed(1), resample_steps, False)
    held = free.expand_as(known) == 0
    assert torch.equal(result[held], known[held])
    assert not torch.allclose(result[~held], known[~held]), "the free part is generated"
    with pytest.raises(ValueError, match="resample_steps"):
        inpaint(predictor, scheduler, known, free, torch.Generator(), 0, False)
