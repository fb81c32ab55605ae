"""Procedural thorax phantoms, as NIfTI cases and as a DICOM tree in the NSCLC-Radiomics layout (tests and the demo)."""
