"""The findings report: rendered from every record on disk into Markdown, self-contained HTML, CSV and plots.

    from saetransfer.report import render_report, verdict_table
    files = render_report(paths.RECORDS, paths.REPORTS)   # README.md, report.html, summary.csv, plots/
    print(verdict_table(paths.RECORDS))                    # for pytest's terminal summary

Modules: `records` (reading and writing records and skip notes), `stable` (what a record commits, so
runs elsewhere do not churn it), `summary` (one row of numbers per evaluation: the CSV), `headline`
(the table that answers, one row per registry entry's primary evaluation; the claims hook), `axes` (an
entry's evaluations side by side, verdict by SAE), `pair_section` (one section per evaluation, compact
for the non-primary ones), `tables` (dataclass fields as tables), `sections` (the whole document),
`plots`, `cross_pair` and `layer_plot` (matplotlib figures),
`doc` (Markdown/HTML rendering), `fmt` (stable number formatting, escaping, verdict colours),
`render` (writing the files).
"""

from saetransfer.report.records import Entry, load_entries
from saetransfer.report.render import ReportFiles, render_report, verdict_table
from saetransfer.report.sections import verdict_rules

__all__ = ["Entry", "ReportFiles", "load_entries", "render_report", "verdict_rules", "verdict_table"]
