"""medidd.report: HTML/JSON reports and their figures (matplotlib on an Agg canvas).

The audit report lives in :mod:`medidd.report.audit` (``write_report``); figures in
:mod:`medidd.report.plots`. Submodules are imported explicitly so that matplotlib loads only
when a report is written.
"""
