"""DICOM RT objects from volumes on a voxel grid: a CT Image Storage series, an RTSTRUCT and a DICOM SEG.

Volumes come in LPS voxel order with their LPS affine (`to_lps` turns a RAS NIfTI into that), the
way DICOM's standard axial orientation lays them out. Contours are traced per slice through the
edge midpoints of the mask's voxels, so rasterising them back gives the mask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from monai.utils import optional_import
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds
from skimage.measure import find_contours

from scripts.dicom.grid import LPS_TO_RAS, reorient

# Only the SEG writer needs these; a sampling-only install (such as a GPU benchmark machine) may lack them.
pydicom_seg, _ = optional_import("pydicom_seg")
sitk, _ = optional_import("SimpleITK")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: SOP Class the RTSTRUCT's study reference names (Detached Study Management, as DICOM RT requires).
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
#: Unsigned CT pixels: HU = pixel + this intercept.
RESCALE_INTERCEPT = -1024
#: The SEG's ContentCreatorName in DICOM's family^given Person Name form (a bare product name is the retired form).
CONTENT_CREATOR = "SYNTHETIC^LUNGCT"
#: Elements pydicom-seg's template adds to every SEG: no other object of the study has them, and no trial exists.
SEG_CLINICAL_TRIAL = ("ClinicalTrialTimePointID", "ClinicalTrialSeriesID", "ClinicalTrialCoordinatingCenterName")
#: Smallest contour planning systems accept: fewer points enclose no area.
MIN_CONTOUR_POINTS = 3

_ALTERED = {
    "CodeValue": "49755003",
    "CodingSchemeDesignator": "SCT",
    "CodeMeaning": "Morphologically Altered Structure",
}
_ANATOMY = {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}


class Coding(NamedTuple):
    """How the RTSTRUCT and SEG describe one structure."""

    interpreted_type: str  #: RTROIInterpretedType
    category: dict[str, str]  #: SEG SegmentedPropertyCategoryCodeSequence item
    property_type: tuple[str, str]  #: SNOMED CT SegmentedPropertyType (code, meaning)
    color: tuple[int, int, int]  #: ROIDisplayColor (RGB), also the SEG's recommended display colour


#: Per structure (the label map's, the two sides of the lungs): its coding, colours as planning systems show them.
CODING = {
    "gtv_1": Coding("GTV", _ALTERED, ("86049000", "Neoplasm, Primary"), (255, 0, 255)),
    "gtv_other": Coding("GTV", _ALTERED, ("14269005", "Neoplasm, Secondary"), (255, 128, 192)),
    "lungs": Coding("ORGAN", _ANATOMY, ("39607008", "Lung"), (0, 128, 255)),
    "lung_left": Coding("ORGAN", _ANATOMY, ("44029006", "Left lung"), (135, 206, 250)),
    "lung_right": Coding("ORGAN", _ANATOMY, ("3341006", "Right lung"), (0, 0, 255)),
    "heart": Coding("ORGAN", _ANATOMY, ("80891009", "Heart"), (255, 0, 0)),
    "esophagus": Coding("ORGAN", _ANATOMY, ("32849002", "Esophagus"), (205, 133, 63)),
    "spinal_cord": Coding("ORGAN", _ANATOMY, ("2748008", "Spinal cord"), (255, 255, 0)),
    "body": Coding("EXTERNAL", _ANATOMY, ("38266002", "Entire body"), (0, 255, 0)),
}


#: (ROI name, structure, mask) per ROI.
Rois = list[tuple[str, str, np.ndarray]]
#: A case's UID maker: uid(role) for a series or study, uid(role, number) for an instance.
Uid = Callable[..., str]


def _ds(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters each)."""
    return [format_number_as_ds(float(v)) for v in np.ravel(values)]


def to_lps(volume: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`volume` with voxel axes towards patient left, posterior, superior (DICOM's usual) and its LPS affine."""
    moved, affine = reorient(volume, affine_ras, "LPS")
    return moved, LPS_TO_RAS @ affine


def trace_contours(mask: np.ndarray, affine_lps: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Closed contours (slice index, LPS points N x 3, N >= 3) around each slice's mask, via voxel edge midpoints."""
    contours = []
    for k in np.nonzero(mask.any(axis=(0, 1)))[0]:
        padded = np.pad(mask[:, :, k], 1).astype(np.float32)
        for line in find_contours(padded, 0.5):
            if len(line) - 1 < MIN_CONTOUR_POINTS:
                continue
            voxels = np.column_stack([line[:-1] - 1.0, np.full(len(line) - 1, k), np.ones(len(line) - 1)])
            contours.append((int(k), (voxels @ affine_lps.T)[:, :3]))
    return contours


def _new_dataset(sop_class: str, sop_instance: str, common: Dataset, implicit_vr: bool = False) -> Dataset:
    """A dataset with file meta for Explicit (or Implicit) VR Little Endian, carrying the patient and study attributes of `common`."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    dataset.is_little_endian, dataset.is_implicit_VR = True, implicit_vr
    dataset.update(copy.deepcopy(common))  # own elements: a later assignment must not reach other datasets
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, sop_instance
    return dataset


def ct_slices(hu: np.ndarray, affine_lps: np.ndarray, uid: Uid, common: Dataset, signed: bool = False) -> list[Dataset]:
    """One CT Image Storage dataset per slice k of `hu` (voxel order column, row, slice), instance 1 at the head end.

    Pixels are unsigned with RescaleIntercept -1024, or with `signed` int16 holding HU (intercept 0). The patient lies
    head first supine (HFS, what planning systems assume) and the body part is the chest, an unpaired one, so the series
    needs no Laterality.
    """
    intercept = 0 if signed else RESCALE_INTERCEPT
    stored = hu.astype(np.int32) - intercept
    limits = np.iinfo(np.int16 if signed else np.uint16)
    if stored.min() < limits.min or stored.max() > limits.max:
        raise ValueError(
            f"HU from {hu.min()} to {hu.max()} do not fit {limits.dtype} pixels with intercept {intercept}"
        )
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
                "BodyPartExamined": "CHEST",
                "PatientPosition": "HFS",
                "AcquisitionNumber": 1,
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
                "PixelRepresentation": int(signed),
                "RescaleIntercept": intercept,
                "RescaleSlope": 1,
                "RescaleType": "HU",
                "KVP": 120,
            }
        )
        dataset.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2" if signed else "<u2").tobytes()
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


def _roi_contours(
    number: int, structure: str, mask: np.ndarray, images: list[Dataset], affine_lps: np.ndarray
) -> Dataset:
    """The ROIContourSequence item of ROI `number`: its colour, a closed planar contour per slice outline of `mask`."""
    contours = []
    for k, points in trace_contours(mask, affine_lps):
        contour = Dataset()
        contour.ContourImageSequence = [images[k]]
        contour.update({"ContourGeometricType": "CLOSED_PLANAR", "NumberOfContourPoints": len(points)})
        contour.ContourData = _ds(points)
        contours.append(contour)
    item = Dataset()
    item.ROIDisplayColor = list(CODING[structure].color)
    item.ReferencedROINumber, item.ContourSequence = number, contours
    return item


def rtstruct_dataset(
    rois: Rois, slices: list[Dataset], affine_lps: np.ndarray, uid: Uid, common: Dataset, label: str
) -> Dataset:
    """An RTSTRUCT named `label` holding each ROI's contours, traced on the CT `slices` (in voxel slice order)."""
    # implicit VR: explicit VR caps a DS element at 64 KiB, less than a body outline's ContourData at 512 x 512
    dataset = _new_dataset(RT_STRUCTURE_SET_STORAGE, uid("rtstruct", 0), common, implicit_vr=True)
    dataset.update(
        {
            "Modality": "RTSTRUCT",
            "SeriesInstanceUID": uid("rtstruct"),
            "SeriesNumber": 2,
            "OperatorsName": "",
            "InstanceNumber": 1,
            "FrameOfReferenceUID": slices[0].FrameOfReferenceUID,
            "PositionReferenceIndicator": slices[0].PositionReferenceIndicator,
        }
    )
    dataset.update(
        {"StructureSetLabel": label, "StructureSetDate": common.StudyDate, "StructureSetTime": common.StudyTime}
    )
    images = [_reference(CT_IMAGE_STORAGE, s.SOPInstanceUID) for s in slices]
    dataset.ReferencedFrameOfReferenceSequence = [_frame_reference(slices, images)]
    dataset.StructureSetROISequence, dataset.ROIContourSequence, dataset.RTROIObservationsSequence = [], [], []
    for number, (name, structure, mask) in enumerate(rois, start=1):
        roi, observation = Dataset(), Dataset()
        roi.update(
            {"ROINumber": number, "ReferencedFrameOfReferenceUID": slices[0].FrameOfReferenceUID, "ROIName": name}
        )
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        observation.update({"ObservationNumber": number, "ReferencedROINumber": number, "ROIInterpreter": ""})
        observation.RTROIInterpretedType = CODING[structure].interpreted_type
        dataset.StructureSetROISequence.append(roi)
        dataset.ROIContourSequence.append(_roi_contours(number, structure, mask, images, affine_lps))
        dataset.RTROIObservationsSequence.append(observation)
    return dataset


def seg_dataset(
    rois: Rois, slices: list[Dataset], affine_lps: np.ndarray, uid: Uid, algorithm: str, later_wins: bool = False
) -> Dataset:
    """A binary SEG of the ROIs via pydicom-seg, one segment a voxel: the earlier ROI's (`later_wins`: later) if both."""
    segments = np.zeros(rois[0][2].shape, np.uint8)
    attributes = []
    for number, (name, structure, mask) in enumerate(rois, start=1):
        segments[mask & ((segments == 0) | later_wins)] = number
        code, meaning = CODING[structure].property_type
        attributes.append(
            {
                "labelID": number,
                "SegmentLabel": name,
                "SegmentDescription": name,
                "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": algorithm,
                "recommendedDisplayRGBValue": list(CODING[structure].color),
                "SegmentedPropertyCategoryCodeSequence": CODING[structure].category,
                "SegmentedPropertyTypeCodeSequence": {
                    "CodeValue": code,
                    "CodingSchemeDesignator": "SCT",
                    "CodeMeaning": meaning,
                },
            }
        )
    template = pydicom_seg.template.from_dcmqi_metainfo(
        {"ContentCreatorName": CONTENT_CREATOR, "SeriesNumber": "300", "segmentAttributes": [attributes]}
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
    for keyword in SEG_CLINICAL_TRIAL:
        delattr(dataset, keyword)
    dataset.SeriesInstanceUID = uid("seg")
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid("seg", 0)
    return dataset


def study_attributes(
    patient_id: str, patient_name: str, study_uid: str, manufacturer: str, date: str, time: str
) -> Dataset:
    """Patient and study attributes shared by a case's CT, RTSTRUCT and SEG."""
    common = Dataset()
    common.update(
        {
            "SpecificCharacterSet": "ISO_IR 100",
            "PatientID": patient_id,
            "PatientName": patient_name,
            "PatientBirthDate": "",
            "PatientSex": "O",
            "StudyInstanceUID": study_uid,
            "StudyDate": date,
            "StudyTime": time,
            "StudyID": "1",
            "AccessionNumber": "",
            "ReferringPhysicianName": "",
            "Manufacturer": manufacturer,
        }
    )
    return common
