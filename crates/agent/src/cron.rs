//! The cron scheduler: runs each `[cron.NAME]` job of every environment's current release once
//! per tick, across deploys and agent restarts (kill -9 included).
//!
//! **Invariant (exactly once per tick):** a run is recorded in the store (`cron_runs`, primary key
//! (app, environment, job, tick), written with `synchronous = FULL`) before its command starts,
//! and a tick that already has a row is never started again. A run an earlier agent left
//! `running` is marked `interrupted` at start, never repeated. The one window left: a kill -9
//! between the row's write and the command's start loses that tick's run (recorded, then
//! `interrupted`); it is never doubled. Jobs that must not lose a tick read `ROLLWAY_CRON_TICK`
//! (the tick, unix milliseconds) to know which one they run for.
//!
//! Ticks while the agent runs: every tick of the current release's schedule runs, in order
//! (more than [`MAX_DUE`] at once, after a clock jump, collapse into the latest). Ticks missed
//! while the agent was down: with `catch_up = true` the latest of them runs once on start
//! (trigger `catch_up`); otherwise none. A job new to a release starts with its next tick.
//!
//! A run uses the release current at its tick (code, config, secrets) and keeps it to its end:
//! a deploy never stops a run; only its `timeout` (or `concurrency = "replace"`) does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::wire::{CronRunState, CronTrigger, ReleaseNumber};
use manifest::cron::{Concurrency, CronJob};
use tokio_util::sync::CancellationToken;

use crate::deploy::release::{ReleaseConfig, load_release, resolve};
use crate::engine::{AppEnv, Engine, now_ms};
use crate::oneoff;
use crate::store::{NewCronRun, NewEvent};

/// How often the scheduler looks for due ticks (per-second schedules of test builds need this).
const POLL: Duration = Duration::from_millis(200);
/// Most ticks of one job started in one pass; more collapse into the latest.
const MAX_DUE: usize = 64;
/// The end of a run's output kept with its record.
const MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// Runs in progress, per job: their ticks and how to stop each (for `concurrency`).
/// std Mutex: map edits only, never held across an await.
#[derive(Default)]
pub struct CronRuns {
    running: Mutex<HashMap<(AppEnv, String), BTreeMap<i64, CancellationToken>>>,
}

impl CronRuns {
    fn ticks(&self, key: &AppEnv, job: &str) -> Vec<(i64, CancellationToken)> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(key.clone(), job.to_owned()))
            .map(|runs| {
                runs.iter()
                    .map(|(tick, stop)| (*tick, stop.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn add(&self, key: &AppEnv, job: &str, tick: i64, stop: CancellationToken) {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((key.clone(), job.to_owned()))
            .or_default()
            .insert(tick, stop);
    }

    fn remove(&self, key: &AppEnv, job: &str, tick: i64) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let job_key = (key.clone(), job.to_owned());
        if let Some(runs) = running.get_mut(&job_key) {
            runs.remove(&tick);
            if runs.is_empty() {
                running.remove(&job_key);
            }
        }
    }

    /// Whether a run of (app, environment) is in progress.
    pub fn any_running(&self, key: &AppEnv) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .any(|(running_key, _)| running_key == key)
    }
}

/// The scheduler; one task for the agent's life.
pub async fn run(engine: Arc<Engine>) {
    let started_at = now_ms();
    match engine.store.interrupt_running_cron_runs(started_at) {
        Ok(runs) => {
            for (app, environment, run) in runs {
                let key = AppEnv::new(app, environment);
                record(
                    &engine,
                    &key,
                    "cron.interrupted",
                    format!(
                        "cron job `{}` (tick {}) was running when the agent stopped; it is not started again",
                        run.job, run.tick
                    ),
                    &run,
                );
            }
        }
        Err(error) => {
            tracing::error!(message = "Cannot mark interrupted cron runs.", error = %crate::report::chain(&error));
        }
    }
    let mut scheduler = Scheduler {
        started_at,
        first_pass: true,
        seen: HashMap::new(),
        jobs: HashMap::new(),
    };
    loop {
        scheduler.pass(&engine);
        scheduler.first_pass = false;
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = engine.shutdown.cancelled() => return,
        }
    }
}

struct Scheduler {
    started_at: i64,
    first_pass: bool,
    /// Jobs seen since the agent started, with when each was first seen.
    seen: HashMap<(AppEnv, String), i64>,
    /// The jobs of each environment's current release (resolved once per release).
    jobs: HashMap<AppEnv, (ReleaseNumber, Vec<CronJob>)>,
}

impl Scheduler {
    fn pass(&mut self, engine: &Arc<Engine>) {
        let apps = match engine.store.apps() {
            Ok(apps) => apps,
            Err(error) => {
                tracing::error!(message = "Cannot list apps for cron.", error = %crate::report::chain(&error));
                return;
            }
        };
        for (app, environment, current) in apps {
            let Some(current) = current else { continue };
            let key = AppEnv::new(app, environment);
            if engine
                .store
                .is_destroyed(&key.app, &key.environment)
                .unwrap_or(false)
            {
                continue;
            }
            let Some(jobs) = self.jobs_of(engine, &key, current) else {
                continue;
            };
            for job in jobs {
                self.job_pass(engine, &key, current, &job);
            }
        }
    }

    fn jobs_of(
        &mut self,
        engine: &Engine,
        key: &AppEnv,
        current: ReleaseNumber,
    ) -> Option<Vec<CronJob>> {
        if let Some((number, jobs)) = self.jobs.get(key)
            && *number == current
        {
            return Some(jobs.clone());
        }
        let release = engine
            .store
            .release(&key.app, &key.environment, current)
            .ok()
            .flatten()?;
        let jobs = serde_json::from_str::<ReleaseConfig>(&release.config_json)
            .ok()
            .and_then(|config| resolve(&config).ok())
            .map(|resolved| resolved.config.cron)
            .unwrap_or_default();
        self.jobs.insert(key.clone(), (current, jobs.clone()));
        Some(jobs)
    }

    fn job_pass(
        &mut self,
        engine: &Arc<Engine>,
        key: &AppEnv,
        release: ReleaseNumber,
        job: &CronJob,
    ) {
        let now = now_ms();
        let first_pass = self.first_pass;
        let started_at = self.started_at;
        let seen_key = (key.clone(), job.name.clone());
        let first_sight = !self.seen.contains_key(&seen_key);
        let seen_at = *self.seen.entry(seen_key).or_insert(now);
        let last = match engine
            .store
            .last_cron_tick(&key.app, &key.environment, &job.name)
        {
            Ok(last) => last,
            Err(error) => {
                tracing::error!(message = "Cannot read a cron job's last tick.", job = %job.name, error = %crate::report::chain(&error));
                return;
            }
        };
        // Ticks before this point belong to a time the agent was down (first pass) or the job was
        // not in the current release (seen later).
        let from = if first_pass { started_at } else { seen_at };
        let after_restart = first_sight && first_pass;
        for (tick, trigger) in
            due_ticks(&job.schedule, job.catch_up, last, from, now, after_restart)
        {
            self.start(engine, key, release, job, tick, trigger);
        }
    }

    fn start(
        &self,
        engine: &Arc<Engine>,
        key: &AppEnv,
        release: ReleaseNumber,
        job: &CronJob,
        tick: i64,
        trigger: CronTrigger,
    ) {
        start_run(engine, key, release, job, tick, trigger, None);
    }
}

/// The ticks of a job to start now, in order: pure, so the rules are table-tested.
///
/// - `last`: the job's latest recorded scheduled tick; `from`: ticks before it are not this
///   agent's to run (it started then, or the job appeared in the current release then);
/// - `after_restart`: the first look at the job since the agent started. Then, with `catch_up`,
///   the latest tick missed while the agent was down (after `last`, before `from`) runs once.
/// - Then every tick after `last` (and not before `from`) up to `now`; more than [`MAX_DUE`]
///   (a clock jump) collapse into the latest.
pub(crate) fn due_ticks(
    schedule: &manifest::cron::CronSchedule,
    catch_up: bool,
    last: Option<i64>,
    from: i64,
    now: i64,
    after_restart: bool,
) -> Vec<(i64, CronTrigger)> {
    let mut due = Vec::new();
    if after_restart
        && catch_up
        && let Some(last) = last
        && let Some(missed) = schedule.last_at_or_before(from - 1)
        && missed > last
    {
        due.push((missed, CronTrigger::CatchUp));
    }
    let mut after = last.map_or(from - 1, |last| last.max(from - 1));
    let mut scheduled = Vec::new();
    while let Some(tick) = schedule.next_after(after) {
        if tick > now {
            break;
        }
        if scheduled.len() == MAX_DUE {
            scheduled.clear();
            scheduled.extend(schedule.last_at_or_before(now));
            break;
        }
        scheduled.push(tick);
        after = tick;
    }
    due.extend(
        scheduled
            .into_iter()
            .map(|tick| (tick, CronTrigger::Schedule)),
    );
    due
}

/// Records a run of `tick` and starts it (or records it skipped, per `concurrency`). Nothing
/// starts when the tick already has a run. Returns whether it started.
pub fn start_run(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: ReleaseNumber,
    job: &CronJob,
    tick: i64,
    trigger: CronTrigger,
    by: Option<&str>,
) -> bool {
    let running = engine.cron.ticks(key, &job.name);
    let skip = job.concurrency == Concurrency::Forbid && !running.is_empty();
    let reason = skip.then(|| {
        format!(
            "the run of tick {} still goes (`concurrency = \"forbid\"`)",
            running.first().map_or(0, |(tick, _)| *tick)
        )
    });
    let claimed = engine.store.claim_cron_tick(&NewCronRun {
        app: &key.app,
        environment: &key.environment,
        job: &job.name,
        tick,
        trigger,
        release,
        state: if skip {
            CronRunState::Skipped
        } else {
            CronRunState::Running
        },
        started_at: now_ms(),
        by,
        reason: reason.as_deref(),
    });
    match claimed {
        Ok(true) if !skip => {}
        Ok(_) => return false,
        Err(error) => {
            tracing::error!(message = "Cannot record a cron run; it does not start.", job = %job.name, error = %crate::report::chain(&error));
            return false;
        }
    }
    if job.concurrency == Concurrency::Replace {
        for (_, stop) in &running {
            stop.cancel();
        }
    }
    let stop = CancellationToken::new();
    engine.cron.add(key, &job.name, tick, stop.clone());
    let engine = engine.clone();
    let key = key.clone();
    let job = job.clone();
    tokio::spawn(async move {
        let (state, exit_code, output, reason) =
            execute(&engine, &key, release, &job, tick, stop).await;
        engine.cron.remove(&key, &job.name, tick);
        let finished_at = now_ms();
        if let Err(error) = engine.store.finish_cron_run(
            &key.app,
            &key.environment,
            &job.name,
            tick,
            state,
            exit_code,
            &output,
            reason.as_deref(),
            finished_at,
        ) {
            tracing::error!(message = "Cannot record the end of a cron run.", job = %job.name, error = %crate::report::chain(&error));
        }
        if state.alerts() {
            let run = client::wire::CronRunView {
                job: job.name.clone(),
                tick,
                trigger,
                release,
                state,
                started_at: tick,
                finished_at: Some(finished_at),
                exit_code,
                by: None,
                output: String::new(),
                reason: reason.clone(),
            };
            let how = match (state, exit_code) {
                (CronRunState::TimedOut, _) => {
                    format!("was stopped after its timeout of {}", job.timeout)
                }
                (_, Some(code)) => format!("failed with exit code {code}"),
                (_, None) => format!(
                    "failed: {}",
                    reason.as_deref().unwrap_or("it could not start")
                ),
            };
            record(
                &engine,
                &key,
                &format!("cron.{state}"),
                format!("cron job `{}` (release {release}) {how}", job.name),
                &run,
            );
        }
    });
    true
}

/// Runs one recorded run to its end: its state, exit code, output tail and reason.
async fn execute(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: ReleaseNumber,
    job: &CronJob,
    tick: i64,
    stop: CancellationToken,
) -> (CronRunState, Option<i32>, String, Option<String>) {
    let loaded = match load_release(engine, key, release) {
        Ok(loaded) => loaded,
        Err(error) => {
            return (
                CronRunState::Failed,
                None,
                String::new(),
                Some(crate::report::chain(&error)),
            );
        }
    };
    let label = format!("cron-{}", job.name);
    let mut output = OutputTail::default();
    let replaced = std::sync::atomic::AtomicBool::new(false);
    let stopping = async {
        tokio::select! {
            () = tokio::time::sleep(job.timeout.as_std()) => {}
            () = stop.cancelled() => replaced.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    };
    let ran = oneoff::run(
        engine,
        oneoff::Command {
            key,
            release: &loaded,
            service: &job.service,
            command: &job.command,
            label: &label,
            env: vec![
                ("ROLLWAY_CRON_JOB".to_owned(), job.name.clone()),
                ("ROLLWAY_CRON_TICK".to_owned(), tick.to_string()),
            ],
        },
        |_, line| {
            output.push(&line);
            std::future::ready(())
        },
        stopping,
    )
    .await;
    match ran {
        Ok(exit) if exit.stopped && replaced.load(std::sync::atomic::Ordering::Relaxed) => (
            CronRunState::Replaced,
            Some(exit.code),
            output.text(),
            Some("a newer tick replaced it (`concurrency = \"replace\"`)".to_owned()),
        ),
        Ok(exit) if exit.stopped => (
            CronRunState::TimedOut,
            Some(exit.code),
            output.text(),
            Some(format!("it ran past its timeout of {}", job.timeout)),
        ),
        Ok(exit) if exit.code == 0 => (CronRunState::Succeeded, Some(0), output.text(), None),
        Ok(exit) => (CronRunState::Failed, Some(exit.code), output.text(), None),
        Err(error) => (
            CronRunState::Failed,
            None,
            output.text(),
            Some(crate::report::chain(&error)),
        ),
    }
}

/// The last [`MAX_OUTPUT_BYTES`] of a run's output, whole lines.
#[derive(Default)]
struct OutputTail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl OutputTail {
    fn push(&mut self, line: &str) {
        let line: String = line.chars().take(MAX_OUTPUT_BYTES / 4).collect();
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > MAX_OUTPUT_BYTES {
            match self.lines.pop_front() {
                Some(dropped) => self.bytes -= dropped.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        let mut text = String::with_capacity(self.bytes);
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

fn record(
    engine: &Engine,
    key: &AppEnv,
    kind: &str,
    message: String,
    run: &client::wire::CronRunView,
) {
    engine.record(
        NewEvent {
            app: Some(key.app.clone()),
            environment: Some(key.environment.clone()),
            deployment_id: None,
            kind: kind.to_owned(),
            message,
            data_json: "{}".to_owned(),
        }
        .with_data(run),
    );
}

#[cfg(test)]
mod tests;
