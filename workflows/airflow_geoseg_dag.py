"""Airflow DAG running geoseg batch workflows nightly through the CLI.

Copy this file into Airflow's ``dags/`` folder on a machine where geoseg is installed (it
is only imported by Airflow; geoseg does not depend on Airflow). One task per workflow runs
``geoseg batch FILE``; a re-run does only what is missing, so Airflow retries and backfills
are safe. Exit code 1 (some scenes failed) fails the task so Airflow's alerting fires; the
next try retries only the failed scenes, within the workflow's ``retries``. A task killed
by Airflow (timeout, mark as failed) gets SIGTERM, its whole process group: geoseg stops at
once, keeps every finished scene (and the finished blocks of the others) and exits 130; its
Dask workers ignore the signal and are closed by geoseg. After each batch,
``geoseg batch status`` logs the manifest as a table.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

GEOSEG = "/opt/geoseg/.venv/bin/geoseg"
WORKFLOWS = Path("/opt/geoseg/workflows")
# workflow file stem -> cron schedule
SCHEDULES = {
    "water-monitoring": "0 3 * * *",
    "roads": "30 4 * * 0",
}

for name, schedule in SCHEDULES.items():
    workflow = shlex.quote(str(WORKFLOWS / f"{name}.yaml"))
    with DAG(
        dag_id=f"geoseg_{name.replace('-', '_')}",
        description=f"geoseg batch workflow {name}",
        schedule=schedule,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,  # one run catches up everything that is missing
        max_active_runs=1,  # the output folder's lock would refuse a second one anyway
        default_args={
            "retries": 1,
            "retry_delay": timedelta(minutes=30),
            "execution_timeout": timedelta(hours=8),
        },
        tags=["geoseg"],
    ) as dag:
        run = BashOperator(
            task_id="batch",
            bash_command=f"{GEOSEG} batch run {workflow} -q",
        )
        status = BashOperator(
            task_id="status",
            bash_command=f"COLUMNS=160 {GEOSEG} batch status {workflow}",
            trigger_rule="all_done",  # also after a failed batch: the table says what failed
        )
        run >> status
    globals()[dag.dag_id] = dag
