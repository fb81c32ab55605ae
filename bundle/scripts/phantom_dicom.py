"""The bundle's thorax phantoms as a DICOM tree in the NSCLC-Radiomics layout, so `ingest` is tested on known truth.

`<out>/PHANTOM-XXX/<study>/<series>/<files>` per case: a CT Image Storage series (unsigned pixels with
RescaleIntercept -1024, standard axial orientation, files numbered from the head down), an RTSTRUCT whose closed
planar contours are traced from the phantom's masks, and a DICOM SEG (written with pydicom-seg). ROI and segment
names vary between cases as clinical names do (GTV-1, GTV1, gtv 1, Lung-Left with Lung-Right, Lungs-Total,
lung_r...). The cases are those `scripts.phantoms.write_phantoms` writes as NIfTI, converted.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom_seg
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from skimage.measure import find_contours
from tqdm import tqdm

from scripts.dicom_grid import LPS_TO_RAS, reorient
from scripts.labels import LABELS, PRECEDENCE
from scripts.phantoms import write_phantoms
from scripts.staging import staged_folder

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: SOP Class the RTSTRUCT's study reference names (Detached Study Management, as DICOM RT requires).
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
#: CT pixels are stored unsigned: HU = pixel + this intercept.
RESCALE_INTERCEPT = -1024

#: ROI name variants per structure, one drawn per case; two names split the lungs into the patient's left and right.
ROI_NAMES = {
    "gtv_1": (("GTV-1",), ("GTV1",), ("gtv 1",), ("GTV_1",)),
    "gtv_other": (("GTV-2",), ("GTV2",), ("gtv 2",)),
    "lungs": (("Lung-Left", "Lung-Right"), ("Lungs-Total",), ("lung_l", "lung_r"), ("Lungs",)),
    "heart": (("Heart",), ("heart",), ("HEART",)),
    "oesophagus": (("Esophagus",), ("Oesophagus",), ("esophagus",)),
    "spinal_cord": (("Spinal-Cord",), ("SpinalCord",), ("spinal cord",)),
    "body": (("External",), ("BODY",), ("Body",)),
}

_ALTERED = {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Morphologically Altered Structure"}
_ANATOMY = {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
#: Per structure: RTSTRUCT interpreted type, SEG property category and SNOMED CT property type (code, meaning).
CODING = {
    "gtv_1": ("GTV", _ALTERED, ("86049000", "Neoplasm, Primary")),
    "gtv_other": ("GTV", _ALTERED, ("14269005", "Neoplasm, Secondary")),
    "lungs": ("ORGAN", _ANATOMY, ("39607008", "Lung")),
    "heart": ("ORGAN", _ANATOMY, ("80891009", "Heart")),
    "oesophagus": ("ORGAN", _ANATOMY, ("32849002", "Esophagus")),
    "spinal_cord": ("ORGAN", _ANATOMY, ("2748008", "Spinal cord")),
    "body": ("EXTERNAL", _ANATOMY, ("38266002", "Entire body")),
}


#: (ROI name, structure, mask) per ROI.
Rois = list[tuple[str, str, np.ndarray]]
#: A case's UID maker: uid(role) for a series or study, uid(role, number) for an instance.
Uid = Callable[..., str]


def _ds(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters each)."""
    return [format_number_as_ds(float(v)) for v in np.ravel(values)]


def phantom_rois(label: np.ndarray, affine_lps: np.ndarray, rng: np.random.Generator) -> Rois:
    """(ROI name, structure, mask) per structure present, in precedence order; the body ROI outlines the whole patient."""
    i = np.arange(label.shape[0])[:, None, None]
    j = np.arange(label.shape[1])[None, :, None]
    k = np.arange(label.shape[2])[None, None, :]
    patient_left = affine_lps[0, 0] * i + affine_lps[0, 1] * j + affine_lps[0, 2] * k + affine_lps[0, 3] > 0
    rois = []
    for structure in PRECEDENCE:
        mask = label > 0 if structure == "body" else label == LABELS[structure]
        if not mask.any():
            continue
        variant = ROI_NAMES[structure][rng.integers(len(ROI_NAMES[structure]))]
        if len(variant) == 2:
            rois += [(variant[0], structure, mask & patient_left), (variant[1], structure, mask & ~patient_left)]
        else:
            rois.append((variant[0], structure, mask))
    return rois


def trace_contours(mask: np.ndarray, affine_lps: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Closed contours (slice index, LPS points N x 3) around each slice's mask, through the edge midpoints of its voxels."""
    contours = []
    for k in np.nonzero(mask.any(axis=(0, 1)))[0]:
        padded = np.pad(mask[:, :, k], 1).astype(np.float32)
        for line in find_contours(padded, 0.5):
            voxels = np.column_stack([line[:-1] - 1.0, np.full(len(line) - 1, k), np.ones(len(line) - 1)])
            contours.append((int(k), (voxels @ affine_lps.T)[:, :3]))
    return contours


def _new_dataset(sop_class: str, sop_instance: str, common: Dataset) -> Dataset:
    """A dataset with file meta for Explicit VR Little Endian, carrying the patient and study attributes of `common`."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.is_little_endian, dataset.is_implicit_VR = True, False
    dataset.update(copy.deepcopy(common))  # own elements: a later assignment must not reach other datasets
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, sop_instance
    return dataset


def ct_slices(hu: np.ndarray, affine_lps: np.ndarray, uid: Uid, common: Dataset) -> list[Dataset]:
    """One CT Image Storage dataset per slice k of `hu` (voxel order column, row, slice), instance 1 at the head end."""
    stored = hu.astype(np.int32) - RESCALE_INTERCEPT
    if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"HU from {hu.min()} to {hu.max()} do not fit unsigned pixels with intercept {RESCALE_INTERCEPT}")
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    orientation = np.concatenate([affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]])
    slices = []
    for k in range(hu.shape[2]):
        dataset = _new_dataset(CT_IMAGE_STORAGE, uid("ct", k), common)
        position = affine_lps @ [0.0, 0.0, k, 1.0]
        dataset.update(
            {
                "Modality": "CT",
                "FrameOfReferenceUID": uid("frame"),
                "PositionReferenceIndicator": "",
                "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
                "SeriesInstanceUID": uid("ct"),
                "SeriesNumber": 1,
                "InstanceNumber": hu.shape[2] - k,
                "ImagePositionPatient": _ds(position[:3]),
                "ImageOrientationPatient": _ds(orientation),
                "PixelSpacing": _ds([spacing[1], spacing[0]]),
                "SliceThickness": format_number_as_ds(float(spacing[2])),
                "SliceLocation": format_number_as_ds(float(position[2])),
                "Rows": hu.shape[1],
                "Columns": hu.shape[0],
                "SamplesPerPixel": 1,
                "PhotometricInterpretation": "MONOCHROME2",
                "BitsAllocated": 16,
                "BitsStored": 16,
                "HighBit": 15,
                "PixelRepresentation": 0,
                "RescaleIntercept": RESCALE_INTERCEPT,
                "RescaleSlope": 1,
                "RescaleType": "HU",
                "KVP": 120,
            }
        )
        dataset.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
        slices.append(dataset)
    return slices


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    """A (ReferencedSOPClassUID, ReferencedSOPInstanceUID) item."""
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    return item


def _frame_reference(slices: list[Dataset], images: list[Dataset]) -> Dataset:
    """The RTSTRUCT's ReferencedFrameOfReferenceSequence item: the CT's frame, study, series and images."""
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = slices[0].SeriesInstanceUID, images
    study = _reference(STUDY_REFERENCE_CLASS, slices[0].StudyInstanceUID)
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = slices[0].FrameOfReferenceUID, [study]
    return frame


def _roi_contours(number: int, mask: np.ndarray, images: list[Dataset], affine_lps: np.ndarray) -> Dataset:
    """The ROIContourSequence item of ROI `number`: a closed planar contour per outline of `mask` on each slice."""
    contours = []
    for k, points in trace_contours(mask, affine_lps):
        contour = Dataset()
        contour.ContourImageSequence = [images[k]]
        contour.update({"ContourGeometricType": "CLOSED_PLANAR", "NumberOfContourPoints": len(points)})
        contour.ContourData = _ds(points)
        contours.append(contour)
    item = Dataset()
    item.ReferencedROINumber, item.ContourSequence = number, contours
    return item


def rtstruct_dataset(rois: Rois, slices: list[Dataset], affine_lps: np.ndarray, uid: Uid, common: Dataset) -> Dataset:
    """An RTSTRUCT holding each ROI's contours, traced on the CT `slices` (in voxel slice order)."""
    dataset = _new_dataset(RT_STRUCTURE_SET_STORAGE, uid("rtstruct", 0), common)
    dataset.update({"Modality": "RTSTRUCT", "SeriesInstanceUID": uid("rtstruct"), "SeriesNumber": 2, "InstanceNumber": 1})
    dataset.update({"StructureSetLabel": "PHANTOM", "StructureSetDate": common.StudyDate, "StructureSetTime": common.StudyTime})
    images = [_reference(CT_IMAGE_STORAGE, s.SOPInstanceUID) for s in slices]
    dataset.ReferencedFrameOfReferenceSequence = [_frame_reference(slices, images)]
    dataset.StructureSetROISequence, dataset.ROIContourSequence, dataset.RTROIObservationsSequence = [], [], []
    for number, (name, structure, mask) in enumerate(rois, start=1):
        roi, observation = Dataset(), Dataset()
        roi.update({"ROINumber": number, "ReferencedFrameOfReferenceUID": slices[0].FrameOfReferenceUID, "ROIName": name})
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        observation.update({"ObservationNumber": number, "ReferencedROINumber": number, "ROIInterpreter": ""})
        observation.RTROIInterpretedType = CODING[structure][0]
        dataset.StructureSetROISequence.append(roi)
        dataset.ROIContourSequence.append(_roi_contours(number, mask, images, affine_lps))
        dataset.RTROIObservationsSequence.append(observation)
    return dataset


def seg_dataset(rois: Rois, slices: list[Dataset], affine_lps: np.ndarray, uid: Uid) -> Dataset:
    """A binary DICOM SEG of the ROIs (one segment each, the earlier ROI winning where they overlap), via pydicom-seg."""
    segments = np.zeros(rois[0][2].shape, np.uint8)
    attributes = []
    for number, (name, structure, mask) in enumerate(rois, start=1):
        segments[mask & (segments == 0)] = number
        code, meaning = CODING[structure][2]
        attributes.append(
            {
                "labelID": number,
                "SegmentLabel": name,
                "SegmentDescription": name,
                "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": "scripts.phantoms",
                "SegmentedPropertyCategoryCodeSequence": CODING[structure][1],
                "SegmentedPropertyTypeCodeSequence": {"CodeValue": code, "CodingSchemeDesignator": "SCT", "CodeMeaning": meaning},
            }
        )
    template = pydicom_seg.template.from_dcmqi_metainfo(
        {"ContentCreatorName": "Phantom^Generator", "SeriesNumber": "300", "segmentAttributes": [attributes]}
    )
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.transpose(segments, (2, 1, 0)))
    image.SetOrigin(affine_lps[:3, 3].tolist())
    image.SetSpacing(spacing.tolist())
    image.SetDirection((affine_lps[:3, :3] / spacing).ravel().tolist())
    # pydicom-seg 0.4.1 shares data elements with its first source image and then gives the SEG a new
    # FrameOfReferenceUID through them: hand it copies, and set the CT's frame of reference back
    dataset = pydicom_seg.MultiClassWriter(template=template).write(image, copy.deepcopy(slices))
    dataset.FrameOfReferenceUID = slices[0].FrameOfReferenceUID
    dataset.SeriesInstanceUID = uid("seg")
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid("seg", 0)
    return dataset


def _common(case: str, uid: Uid) -> Dataset:
    """Patient and study attributes shared by a case's CT, RTSTRUCT and SEG."""
    common = Dataset()
    common.update(
        {
            "SpecificCharacterSet": "ISO_IR 100",
            "PatientID": case,
            "PatientName": case.replace("-", "^"),
            "PatientBirthDate": "",
            "PatientSex": "O",
            "StudyInstanceUID": uid("study"),
            "StudyDate": "20000101",
            "StudyTime": "120000",
            "StudyID": "1",
            "AccessionNumber": "",
            "ReferringPhysicianName": "",
            "Manufacturer": "scripts.phantom_dicom",
        }
    )
    return common


def case_uid(seed: int, size: int, case: str, role: str, number: int = -1) -> str:
    """A UID fixed by the seed, size, case, role (study, frame, ct, rtstruct, seg) and instance number."""
    return generate_uid(entropy_srcs=["phantom", str(seed), str(size), case, role, str(number)])


def write_case(
    folder: Path, case: str, hu: np.ndarray, label: np.ndarray, affine_ras: np.ndarray, rng: np.random.Generator, uid: Uid
) -> None:
    """Write one phantom (RAS arrays) as `<folder>/<study>/<series>/<files>`: CT series, RTSTRUCT and SEG."""
    hu, affine = reorient(hu, affine_ras, "LPS")  # voxel axes towards patient left, posterior, superior: DICOM's usual
    label, _ = reorient(label, affine_ras, "LPS")
    affine_lps = LPS_TO_RAS @ affine
    common = _common(case, uid)
    slices = ct_slices(hu, affine_lps, uid, common)
    rois = phantom_rois(label, affine_lps, rng)
    study = folder / f"01-01-2000-NA-PHANTOM-{common.StudyInstanceUID[-5:]}"
    series = {
        f"0.000000-NA-{slices[0].SeriesInstanceUID[-5:]}": slices,
        f"1.000000-NA-{uid('rtstruct')[-5:]}": [rtstruct_dataset(rois, slices, affine_lps, uid, common)],
        f"300.000000-Segmentation-{uid('seg')[-5:]}": [seg_dataset(rois, slices, affine_lps, uid)],
    }
    for name, datasets in series.items():
        (study / name).mkdir(parents=True)
        for dataset in datasets:
            dataset.save_as(study / name / f"1-{int(dataset.InstanceNumber):03d}.dcm", write_like_original=False)


def write_phantom_dicom(out: str, n: int = 8, size: int = 128, seed: int = 0) -> Path:
    """Write the phantoms `write_phantoms(out, n, size, seed)` makes as a DICOM tree `<out>/PHANTOM-XXX/...` for `ingest`.

    The same arguments give the same cases (and UIDs); existing case folders in `out` are kept, never overwritten.
    """
    root = Path(out)
    with tempfile.TemporaryDirectory() as nifti:
        write_phantoms(nifti, n=n, size=size, seed=seed)  # the one source of the phantoms, so both formats agree
        cases = sorted(p.name for p in Path(nifti).iterdir() if p.is_dir())
        for index, case in enumerate(tqdm(cases, desc="phantoms to DICOM", unit="case")):
            if (root / case).exists():
                logger.info("%s exists, kept", root / case)
                continue
            ct, label = (nib.load(Path(nifti) / case / name) for name in ("ct.nii.gz", "label.nii.gz"))
            hu, mask, affine = np.asanyarray(ct.dataobj), np.asanyarray(label.dataobj), ct.affine
            with staged_folder(root / case) as staging:
                write_case(staging, case, hu, mask, affine, np.random.default_rng([seed, index]), partial(case_uid, seed, size, case))
    return root
