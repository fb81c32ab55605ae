"""DICOM in and out: index a tree, read CT series, RTSTRUCT and SEG, ingest patients; write CT, RTSTRUCT and SEG."""
