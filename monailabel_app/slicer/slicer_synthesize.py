"""3D Slicer: ask the MONAI Label server for a synthetic CT, or for the user's CT with a synthetic tumor inserted;
load it as a scalar volume and its tumor as a segment.

In the Python console of 3D Slicer 5.2 or newer (the MONAI Label extension installed, for its client):

    import sys; sys.path.insert(0, "/path/to/repo/monailabel_app/slicer")
    import slicer_synthesize as synth
    synth.synthesize_ct("http://127.0.0.1:8000", seed=3)
    synth.synthesize_with_tumor("http://127.0.0.1:8000", getNode("CT"), markups=getNode("F"), diameter_mm=30)
    synth.synthesize_with_tumor("http://127.0.0.1:8000", getNode("CT"), segmentation=getNode("Segmentation"), segment_id="Tumor")
    synth.insert_tumor("http://127.0.0.1:8000", getNode("CT"), markups=getNode("F"), diameter_mm=30, blend_margin_mm=10)
    synth.synthesize_ct("https://gpu-host.example:8000", seed=3, token=open("/path/to/token").read().strip())

Slicer's stock MONAI Label module would load the result as a uint8 labelmap and destroy the HU;
this script loads it with `labelmap: False`. Everything that needs no Slicer is in synthesis_client.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import slicer
import vtk
from synthesis_client import INSERT_TASK, TASK, TUMOR_TASK, Synthesis, ras_to_voxel, request_params, synthesize

#: Where results are kept for the session (Slicer's temporary folder).
RESULTS = Path(slicer.app.temporaryPath) / "synthetic_ct"
#: Lung window (width, level) for the loaded CT.
LUNG_WINDOW = (1500, -600)


def show(result: Synthesis, name: str) -> tuple:
    """Load the CT as a scalar volume (never a labelmap), the mask and the structures as segmentations on it (segments
    named as the server names them); returns the CT and tumor nodes."""
    volume = slicer.util.loadVolume(str(result.ct_path), {"labelmap": False, "name": name})
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(*LUNG_WINDOW)
    segmentation = None
    if result.mask_path is not None:
        segmentation = slicer.util.loadSegmentation(str(result.mask_path), {"name": f"{name} tumor"})
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    if result.structures_path is not None:
        structures = slicer.util.loadSegmentation(str(result.structures_path), {"name": f"{name} structures"})
        structures.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        names = {number: label for label, number in result.info["structures_labels"].items()}
        segments = structures.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            segment.SetName(names.get(segment.GetLabelValue(), segment.GetName()))
    slicer.util.setSliceViewerLayers(background=volume, fit=True)
    return volume, segmentation


def synthesize_ct(
    server_url: str,
    seed: int = 0,
    num_inference_steps: int | None = None,
    sampler: str | None = None,
    token: str | None = None,
) -> tuple:
    """An unconditional synthetic CT, shown in the slice views (`token`: the server's bearer token, if it has one)."""
    result = synthesize(server_url, TASK, request_params(seed, num_inference_steps, sampler), RESULTS, token=token)
    return show(result, f"synthetic CT seed {seed}")


def clicked_voxels(markups, volume) -> list[list[float]]:
    """The markups' control points as voxel positions of `volume`."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    matrix = slicer.util.arrayFromVTKMatrix(ras_to_ijk)
    voxels = []
    for n in range(markups.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(n, ras)
        voxels.append(ras_to_voxel(ras, matrix))
    return voxels


def saved_label(segmentation, segment_id: str | None, volume, path: Path) -> Path:
    """The segment (default: the first) as a binary labelmap on the volume's grid, written to `path`."""
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id or segmentation.GetSegmentation().GetNthSegmentID(0))
    slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
    slicer.util.exportNode(labelmap, str(path))
    slicer.mrmlScene.RemoveNode(labelmap)
    return path


def tumor_task(
    server_url: str,
    task: str,
    volume,
    markups=None,
    segmentation=None,
    segment_id: str | None = None,
    diameter_mm: float = 30.0,
    seed: int = 0,
    num_inference_steps: int | None = None,
    sampler: str | None = None,
    token: str | None = None,
    **extra: float,
) -> Synthesis:
    """Run the tumor task `task` on `volume` (uploaded) with the markups' points as tumors of `diameter_mm`, or the
    segment (default: the first) as the tumor; `extra`: more params (request_params' keywords); `token`: the server's
    bearer token, if it has one."""
    with tempfile.TemporaryDirectory() as folder:
        image_file = Path(folder) / "image.nii.gz"
        slicer.util.exportNode(volume, str(image_file))
        label_file = (
            saved_label(segmentation, segment_id, volume, Path(folder) / "label.nii.gz") if segmentation else None
        )
        clicks = clicked_voxels(markups, volume) if markups else None
        params = request_params(seed, num_inference_steps, sampler, clicks, diameter_mm if clicks else None, **extra)
        return synthesize(server_url, task, params, RESULTS, image_file=image_file, label_file=label_file, token=token)


def synthesize_with_tumor(server_url: str, volume, **options) -> tuple:
    """A synthetic CT with a tumor at the markups' points, or in the segment, of `volume`, shown in the slice views;
    `options`: tumor_task's (markups, segmentation, segment_id, diameter_mm, seed, num_inference_steps, sampler, token)."""
    result = tumor_task(server_url, TUMOR_TASK, volume, **options)
    return show(result, f"synthetic CT seed {result.info['seed']} with tumor")


def insert_tumor(server_url: str, volume, blend_margin_mm: float | None = None, **options) -> tuple:
    """`volume` itself with a synthetic tumor at the markups' points, or in the segment, loaded beside it: the same
    grid, changed only within `blend_margin_mm` (0 to 50; default: the server's) of the tumor; `options`: as for
    synthesize_with_tumor."""
    result = tumor_task(server_url, INSERT_TASK, volume, blend_margin_mm=blend_margin_mm, **options)
    return show(result, f"{volume.GetName()} with tumor seed {result.info['seed']}")
