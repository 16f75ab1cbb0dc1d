//! Cron runs: one row per (app, environment, job, tick), written before the run starts.
//!
//! Rows, not rules: when a tick is due and what a run does are `crate::cron`'s.

use client::wire::{CronRunState, CronRunView, CronTrigger, ReleaseNumber};
use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, app_subject, parsed, release_number};

/// A run about to start (or recorded as skipped), as `claim_cron_tick` writes it.
#[derive(Debug, Clone)]
pub struct NewCronRun<'a> {
    pub app: &'a str,
    pub environment: &'a str,
    pub job: &'a str,
    pub tick: i64,
    pub trigger: CronTrigger,
    pub release: ReleaseNumber,
    /// `Running`, or `Skipped` for a tick that must not start.
    pub state: CronRunState,
    pub started_at: i64,
    pub by: Option<&'a str>,
    pub reason: Option<&'a str>,
}

const RUN_COLUMNS: &str = "job, tick, trigger, release, state, started_at, finished_at, exit_code, \
                           by_name, output, reason";

impl Store {
    /// Records a run of a tick; `false` when that tick already has one (it ran or runs: never
    /// again). The write is durable (`synchronous = FULL`) before the caller starts anything.
    pub fn claim_cron_tick(&self, run: &NewCronRun<'_>) -> Result<bool, StoreError> {
        let changed = self
            .connection()
            .execute(
                "INSERT INTO cron_runs (app, environment, job, tick, trigger, release, state, started_at, by_name, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (app, environment, job, tick) DO NOTHING",
                params![
                    run.app,
                    run.environment,
                    run.job,
                    run.tick,
                    run.trigger.as_str(),
                    run.release.get(),
                    run.state.as_str(),
                    run.started_at,
                    run.by,
                    run.reason,
                ],
            )
            .map_err(|source| {
                self.error(
                    "record a cron run",
                    format!("job `{}` of {}", run.job, app_subject(run.app, run.environment)),
                    source,
                )
            })?;
        Ok(changed == 1)
    }

    /// Ends a running run. A run that is no longer `running` (an earlier agent's, marked
    /// interrupted) keeps its state.
    #[allow(clippy::too_many_arguments, reason = "one row's columns")]
    pub fn finish_cron_run(
        &self,
        app: &str,
        environment: &str,
        job: &str,
        tick: i64,
        state: CronRunState,
        exit_code: Option<i32>,
        output: &str,
        reason: Option<&str>,
        finished_at: i64,
    ) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "UPDATE cron_runs SET state = ?5, exit_code = ?6, output = ?7, reason = ?8, finished_at = ?9
                 WHERE app = ?1 AND environment = ?2 AND job = ?3 AND tick = ?4 AND state = 'running'",
                params![
                    app,
                    environment,
                    job,
                    tick,
                    state.as_str(),
                    exit_code,
                    output,
                    reason,
                    finished_at
                ],
            )
            .map_err(|source| {
                self.error(
                    "finish a cron run",
                    format!("job `{job}` of {}", app_subject(app, environment)),
                    source,
                )
            })?;
        Ok(())
    }

    /// At start: runs an earlier agent left `running` cannot be followed any more (their exit is
    /// not ours to see); they are marked interrupted, and never started again. Returns them.
    pub fn interrupt_running_cron_runs(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(String, String, CronRunView)>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection
            .transaction()
            .map_err(|source| self.error("interrupt cron runs", self.subject(), source))?;
        let runs = {
            let mut statement = transaction
                .prepare(&format!(
                    "SELECT app, environment, {RUN_COLUMNS} FROM cron_runs WHERE state = 'running'"
                ))
                .map_err(|source| self.error("interrupt cron runs", self.subject(), source))?;
            statement
                .query_map([], |row| {
                    Ok((row.get(0)?, row.get(1)?, run_from_row(row, 2)?))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|source| self.error("interrupt cron runs", self.subject(), source))?
        };
        transaction
            .execute(
                "UPDATE cron_runs SET state = 'interrupted', finished_at = ?1,
                     reason = 'the agent stopped while it ran; it is not started again'
                 WHERE state = 'running'",
                params![now_ms],
            )
            .map_err(|source| self.error("interrupt cron runs", self.subject(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error("interrupt cron runs", self.subject(), source))?;
        Ok(runs)
    }

    /// The latest scheduled tick recorded for a job (manual runs do not count).
    pub fn last_cron_tick(
        &self,
        app: &str,
        environment: &str,
        job: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.connection()
            .query_row(
                "SELECT max(tick) FROM cron_runs
                 WHERE app = ?1 AND environment = ?2 AND job = ?3 AND trigger != 'manual'",
                params![app, environment, job],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|source| {
                self.error(
                    "read the last cron tick",
                    format!("job `{job}` of {}", app_subject(app, environment)),
                    source,
                )
            })
    }

    /// A job's runs, newest first, at most `limit`.
    pub fn cron_runs(
        &self,
        app: &str,
        environment: &str,
        job: &str,
        limit: u32,
    ) -> Result<Vec<CronRunView>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM cron_runs
                 WHERE app = ?1 AND environment = ?2 AND job = ?3
                 ORDER BY started_at DESC, tick DESC LIMIT ?4"
            ),
            params![app, environment, job, limit],
            |row| run_from_row(row, 0),
        )
        .map_err(|source| {
            self.error(
                "list cron runs",
                format!("job `{job}` of {}", app_subject(app, environment)),
                source,
            )
        })
    }
}

fn run_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<CronRunView> {
    Ok(CronRunView {
        job: row.get(first)?,
        tick: row.get(first + 1)?,
        trigger: parsed(row, first + 2)?,
        release: release_number(row, first + 3)?,
        state: parsed(row, first + 4)?,
        started_at: row.get(first + 5)?,
        finished_at: row.get(first + 6)?,
        exit_code: row.get(first + 7)?,
        by: row.get(first + 8)?,
        output: row.get(first + 9)?,
        reason: row.get(first + 10)?,
    })
}
