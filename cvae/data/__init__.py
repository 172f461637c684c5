"""Cardiac data: the ACDC reader, the synthetic ACDC-like cohort, preprocessing and the training dataset."""
