"""The visual QA report of a dataset directory (`subjectforge report`). `build_report` is imported
on first use: a dataset module that names its card (report.cards) does not load the page builder."""

__all__ = ["build_report"]


def __getattr__(name):
    if name == "build_report":
        from report.build import build_report

        return build_report
    raise AttributeError(f"module 'report' has no attribute {name!r}")
