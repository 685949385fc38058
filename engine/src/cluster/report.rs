//! What the scheduler tells a driver about its jobs once they succeeded: the tasks
//! launched, how many of them were retried, and the rows the scans read.
//!
//! Ballista's client learns of a job only its result: not its id, not its task
//! attempts. So the driver names each job (`ballista.job.name`,
//! `flumen:<its session>:<n>`: unique, as the scheduler gives each job a session of its
//! own), and
//! `flumen scheduler` keeps, for each named job that succeeded, a [`JobReport`] drawn
//! from the job's execution graph when Ballista announces the job's end (its job
//! state events). After a batch the driver asks for its jobs by name on the
//! scheduler's HTTP port (`GET /flumen/jobs?names=..`) and the reports are
//! handed over once.
//!
//! ```text
//!   task status (attempt, metrics) ──▶ scheduler: execution graph ──job succeeded──▶
//!       Reports (by job name) ◀── GET /flumen/jobs ── driver, after a batch
//! ```
//!
//! A retry is an attempt that did not succeed: a task that failed with an error
//! Ballista retries (an I/O error), was lost with its executor, or whose output was
//! lost with its executor after it succeeded (its stage ran again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::serde::protobuf::job_status::Status;
use ballista_core::serde::protobuf::task_status;
use ballista_scheduler::cluster::{JobState, JobStateEvent};
use ballista_scheduler::state::execution_graph::ExecutionGraph;
use ballista_scheduler::state::execution_stage::ExecutionStage;
use datafusion::physical_plan::metrics::{MetricValue, MetricsSet};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::scan::ROWS_READ_PREFIX;

/// What a job name begins with when a driver wants the job's report.
pub const JOB_NAME_PREFIX: &str = "flumen:";

/// Reports kept for drivers that have not asked for them yet (a driver that died
/// leaves its reports; the oldest go first).
const KEPT: usize = 65_536;

/// One succeeded job, as its execution graph tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// Task attempts launched, retries included.
    pub tasks: u64,
    /// Attempts that did not succeed and were run again.
    pub retries: u64,
    /// Rows the job's scans read, by stream (a stream scanned twice in one job —
    /// a self-join — counts once).
    pub rows_read: BTreeMap<String, u64>,
}

impl JobReport {
    fn of(graph: &dyn ExecutionGraph) -> Self {
        let mut report = JobReport::default();
        for stage in graph.stages().values() {
            if let Some(infos) = stage.task_infos() {
                report.tasks += infos.len() as u64;
                report.retries += infos
                    .iter()
                    .filter(|t| !matches!(t.task_status, task_status::Status::Successful(_)))
                    .count() as u64;
            }
            let metrics: &[MetricsSet] = match stage {
                ExecutionStage::Successful(s) => &s.stage_metrics,
                ExecutionStage::Running(s) => s.stage_metrics.as_deref().unwrap_or(&[]),
                _ => &[],
            };
            for set in metrics {
                let mut node: BTreeMap<&str, u64> = BTreeMap::new();
                for m in set.iter() {
                    if let MetricValue::Count { name, count } = m.value()
                        && let Some(stream) = name.strip_prefix(ROWS_READ_PREFIX)
                    {
                        *node.entry(stream).or_default() += count.value() as u64;
                    }
                }
                for (stream, rows) in node {
                    let seen = report.rows_read.entry(stream.to_string()).or_default();
                    *seen = (*seen).max(rows);
                }
            }
        }
        report
    }
}

/// What a driver's request gets: the reports found (each handed over once) and the
/// names of jobs still without one when the wait ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub jobs: BTreeMap<String, JobReport>,
    pub missing: Vec<String>,
}

/// The reports a scheduler holds, by job name.
#[derive(Default)]
pub struct Reports {
    held: Mutex<(HashMap<String, JobReport>, VecDeque<String>)>,
    arrived: tokio::sync::Notify,
}

impl Reports {
    fn record(&self, name: String, report: JobReport) {
        let mut held = self.held.lock();
        let (map, order) = &mut *held;
        if map.insert(name.clone(), report).is_none() {
            order.push_back(name);
        }
        while order.len() > KEPT {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        drop(held);
        self.arrived.notify_waiters();
    }

    /// The reports of jobs `names`, waiting up to `wait` for those not in yet (the
    /// driver hears of a job's success just before the scheduler announces it).
    pub async fn take(&self, names: &[String], wait: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + wait;
        let mut reply = Reply::default();
        let mut missing: Vec<String> = names.to_vec();
        loop {
            // Registered before the look, so a report recorded between the look and
            // the wait still wakes it (`notify_waiters` wakes registered waiters only).
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut held = self.held.lock();
                missing.retain(|name| match held.0.remove(name) {
                    Some(r) => {
                        reply.jobs.insert(name.clone(), r);
                        false
                    }
                    None => true,
                });
            }
            if missing.is_empty() || tokio::time::timeout_at(deadline, arrived).await.is_err() {
                reply.missing = missing;
                return reply;
            }
        }
    }

    /// Follows `jobs`' events for as long as the scheduler runs, keeping a report for
    /// every named job that succeeds.
    pub fn follow(self: &Arc<Self>, jobs: Arc<dyn JobState>) {
        let reports = Arc::clone(self);
        tokio::spawn(async move {
            let mut events = match jobs.job_state_events().await {
                Ok(e) => e,
                Err(e) => {
                    log::error!("scheduler: no job events, so no job reports for drivers: {e}");
                    return;
                }
            };
            while let Some(event) = events.next().await {
                let JobStateEvent::JobUpdated { job_id, status } = event else {
                    continue;
                };
                if !matches!(status.status, Some(Status::Successful(_)))
                    || !status.job_name.starts_with(JOB_NAME_PREFIX)
                {
                    continue;
                }
                match jobs.get_execution_graph(&job_id).await {
                    Ok(Some(graph)) => {
                        reports.record(status.job_name, JobReport::of(graph.as_ref()))
                    }
                    Ok(None) => log::warn!("scheduler: job {job_id} ended with no graph kept"),
                    Err(e) => log::warn!("scheduler: job {job_id}'s graph: {e}"),
                }
            }
        });
    }
}

/// The query of `GET /flumen/jobs`: `names` comma-separated.
#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    pub names: String,
}

/// How long the scheduler waits for a job's report before it answers without it.
pub const REPORT_WAIT: Duration = Duration::from_secs(2);

/// `GET /flumen/jobs?names=a,b`: the reports of those jobs.
pub fn routes(reports: Arc<Reports>) -> axum::Router {
    use axum::extract::{Query, State};
    axum::Router::new()
        .route(
            "/flumen/jobs",
            axum::routing::get(
                |State(reports): State<Arc<Reports>>, Query(q): Query<JobsQuery>| async move {
                    let names: Vec<String> = q
                        .names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                    axum::Json(reports.take(&names, REPORT_WAIT).await)
                },
            ),
        )
        .with_state(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_report_arriving_during_the_wait_is_handed_over_once() {
        let reports = Arc::new(Reports::default());
        let late = Arc::clone(&reports);
        let recorder = tokio::spawn(async move {
            tokio::task::yield_now().await;
            late.record(
                "flumen:s:0".into(),
                JobReport {
                    tasks: 3,
                    retries: 1,
                    rows_read: BTreeMap::from([("t".to_string(), 5)]),
                },
            );
        });
        let names = vec!["flumen:s:0".to_string()];
        let reply = reports.take(&names, Duration::from_secs(10)).await;
        recorder.await.unwrap();
        assert!(reply.missing.is_empty(), "{reply:?}");
        assert_eq!(reply.jobs["flumen:s:0"].retries, 1);
        // Taken: asked again, it is missing once the wait ends.
        let again = reports.take(&names, Duration::from_millis(10)).await;
        assert_eq!(again.missing, names);
        assert!(again.jobs.is_empty());
    }
}
