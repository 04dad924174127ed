"""The visual QA report of a dataset directory (`subjectforge report`)."""
from report.build import build_report

__all__ = ["build_report"]
