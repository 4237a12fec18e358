"""The findings report: rendered from every record on disk into Markdown, self-contained HTML, CSV and plots.

    from saetransfer.report import render_report, verdict_table
    files = render_report(paths.RECORDS, paths.REPORTS)   # README.md, report.html, summary.csv, plots/
    print(verdict_table(paths.RECORDS))                    # for pytest's terminal summary

Modules: `records` (reading and writing records and skip notes), `stable` (what a record commits, so
runs elsewhere do not churn it), `summary` (one row of numbers per pair: the CSV), `headline` (the
table that answers, the claims hook), `pair_section` (one section per pair), `tables` (dataclass
fields as tables), `sections` (the whole document), `plots` and `cross_pair` (matplotlib figures),
`doc` (Markdown/HTML rendering), `fmt` (stable number formatting, escaping, verdict colours),
`render` (writing the files).
"""

from saetransfer.report.records import Entry, load_entries
from saetransfer.report.render import ReportFiles, render_report, verdict_table
from saetransfer.report.sections import verdict_rules

__all__ = ["Entry", "ReportFiles", "load_entries", "render_report", "verdict_rules", "verdict_table"]
