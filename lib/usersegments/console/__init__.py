"""What commands print for people: progress lines, table listings and run summaries.

Everything a command shows on the terminal is formatted here (with rich), so the
stages and the orchestration stay free of printing. Figures that a run did not
measure (ARI/NMI without a truth table) are left out, never shown as "nan".

- ``output``: the one console, ``say``, ``print_table`` and how a cell is written;
- ``tables``: listings of the store's tables and of one table's rows;
- ``summary``: the per-stage summary of a run or update, the largest segments;
- ``evaluation``: evaluate, tune, finetune, churn and drift-recovery tables.
"""

from usersegments.console.evaluation import (
    print_churn,
    print_drift_recovery,
    print_evaluation,
    print_finetune,
    print_tuning,
)
from usersegments.console.output import print_table, say
from usersegments.console.summary import print_run_summary, segment_rows
from usersegments.console.tables import print_table_rows, print_tables

__all__ = [
    "print_churn",
    "print_drift_recovery",
    "print_evaluation",
    "print_finetune",
    "print_run_summary",
    "print_table",
    "print_table_rows",
    "print_tables",
    "print_tuning",
    "say",
    "segment_rows",
]
