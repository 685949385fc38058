//! A cluster's processes: Ballista's scheduler and executor with Flumen's codec
//! ([`FlumenCodec`]) and functions installed, so every node decodes every plan a
//! Flumen driver sends. `flumen scheduler` and `flumen executor` run these; tests run
//! them in-process ([`LocalCluster`]).
//!
//! Tasks are pushed by the scheduler to the executors (Ballista's `push-staged`
//! policy): an executor listens for them on its gRPC port, and serves its tasks'
//! results (shuffle files) on its Flight port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use super::{ClusterUrl, FlumenCodec, MAX_MESSAGE_BYTES, report};
use crate::{Error, Result};

/// The functions a node must know beyond DataFusion's: those of Flumen's SQL layer
/// (`flumen_sql::functions::udfs()`), which the engine does not depend on.
pub type Functions = Vec<Arc<ScalarUDF>>;

fn session_state(config: SessionConfig, functions: &Functions) -> Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .build();
    for f in functions {
        datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::clone(f))?;
    }
    Ok(state)
}

fn ballista_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cluster {
        url: what.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

/// Runs a scheduler on `listener` until the process ends.
pub async fn serve_scheduler(
    listener: tokio::net::TcpListener,
    functions: Functions,
) -> Result<()> {
    let addr = listener.local_addr()?;
    // Ballista serves a listener given to it with axum, which leaves Nagle's algorithm
    // on: each small reply (a job's status, pushed to the driver) then waited for the
    // peer's delayed ACK, ~40 ms a job. Sockets accepted from a listener with
    // TCP_NODELAY have it too.
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    let mut config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        scheduling_policy: TaskSchedulingPolicy::PushStaged,
        grpc_server_max_decoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_server_max_encoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_client_max_message_size: MAX_MESSAGE_BYTES as u32,
        override_physical_codec: Some(Arc::new(FlumenCodec::default())),
        // An executor silent for 15 s (its heartbeat is every 5 s) is dead: its
        // tasks run elsewhere (Ballista's default waits 180 s).
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        // A stream runs a job or two a batch: Ballista's defaults (a finished job's
        // graph kept an hour, its shuffle files five minutes) would keep 360,000
        // graphs at 10 ms batches. A driver has its results and job reports within
        // seconds of a job's end.
        finished_job_state_clean_up_interval_seconds: 60,
        finished_job_data_clean_up_interval_seconds: 60,
        ..SchedulerConfig::default()
    };
    config.override_session_builder = Some(Arc::new(move |c: SessionConfig| {
        session_state(c, &functions).map_err(|e| match e {
            Error::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        })
    }));
    let what = format!("scheduler on {addr}");
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista_error(&what, e))?;
    let reports = Arc::new(report::Reports::default());
    reports.follow(cluster.job_state());
    let config = Arc::new(config);
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::clone(&config))
            .await
            .map_err(|e| ballista_error(&what, e))?;
    // Ballista's `start_grpc_service_with_listener` serves its gRPC service and REST
    // API on one port; Flumen's scheduler serves the same two and its job reports
    // (`report.rs`), which a router of Ballista's cannot be given.
    let grpc = SchedulerGrpcServer::new(scheduler.clone())
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut services = tonic::service::RoutesBuilder::default();
    services.add_service(grpc);
    let router = ballista_scheduler::api::get_routes(Arc::new(scheduler))
        .merge(services.routes().into_axum_router())
        .merge(report::routes(reports));
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| ballista_error(&what, e))
}

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler it registers with.
    pub scheduler: ClusterUrl,
    /// The address it listens on (and tells the scheduler).
    pub host: String,
    /// The port its tasks' results are fetched from (Arrow Flight).
    pub port: u16,
    /// The port the scheduler pushes tasks to.
    pub grpc_port: u16,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Where its tasks' shuffle files go (a folder of the system's temporary one
    /// unless given).
    pub work_dir: Option<PathBuf>,
}

/// Runs an executor until the process ends (or Ctrl-C).
pub async fn run_executor(options: ExecutorOptions, functions: Functions) -> Result<()> {
    let state = session_state(SessionConfig::new(), &functions)?;
    let work_dir = options
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("flumen-executor-{}", options.port)));
    std::fs::create_dir_all(&work_dir).map_err(|e| {
        Error::Plan(format!(
            "executor: cannot create its work folder {}: {e}",
            work_dir.display()
        ))
    })?;
    // Ballista binds the Flight port only after the executor has registered, so a
    // port another process holds made an executor the scheduler counted and then
    // lost. Bound here, a taken port is an error before anything registers.
    let flight_addr = format!("{}:{}", options.host, options.port);
    let flight = std::net::TcpListener::bind(&flight_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            Error::Plan(format!(
                "executor: cannot listen on {flight_addr} (its Flight port): {e}"
            ))
        })?;
    let flight = std::sync::Mutex::new(Some(flight));
    let config = ExecutorProcessConfig {
        override_arrow_flight_service: Some(Arc::new(move |work_dir, _addr, shutdown, grpc| {
            let listener = flight.lock().ok().and_then(|mut l| l.take());
            serve_flight(listener, work_dir, shutdown, grpc)
        })),
        bind_host: options.host.clone(),
        external_host: Some(options.host.clone()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.host.clone(),
        scheduler_port: options.scheduler.port,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.slots.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir: Some(work_dir.display().to_string()),
        grpc_max_decoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_max_encoding_message_size: MAX_MESSAGE_BYTES as u32,
        executor_heartbeat_interval_seconds: 5,
        override_physical_codec: Some(Arc::new(FlumenCodec::default())),
        override_execution_engine: Some(Arc::new(super::state::FlumenEngine::default())),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&state))),
        ..ExecutorProcessConfig::default()
    };
    let what = format!(
        "executor on {}:{} (gRPC port {})",
        options.host, options.port, options.grpc_port
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista_error(&what, e))
}

/// Ballista's Flight service (an executor's shuffle files) on the socket
/// [`run_executor`] bound.
fn serve_flight(
    listener: Option<std::net::TcpListener>,
    work_dir: String,
    mut shutdown: ballista_executor::shutdown::Shutdown,
    grpc: ballista_core::utils::GrpcServerConfig,
) -> tokio::task::JoinHandle<std::result::Result<(), ballista_core::error::BallistaError>> {
    use ballista_core::error::BallistaError;
    tokio::spawn(async move {
        let listener = listener.ok_or_else(|| {
            BallistaError::General("the executor's Flight service was started twice".into())
        })?;
        let incoming = tonic::transport::server::TcpIncoming::from(
            tokio::net::TcpListener::from_std(listener)?,
        )
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(
            grpc.tcp_keepalive_seconds,
        )));
        let service = arrow_flight::flight_service_server::FlightServiceServer::new(
            ballista_executor::flight_service::BallistaFlightService::new(work_dir),
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        ballista_core::utils::create_grpc_server(&grpc)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.recv())
            .await
            .map_err(BallistaError::TonicError)
    })
}

/// A free TCP port on `host`, for a process that binds it itself.
pub fn free_port(host: &str) -> Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A scheduler and executors running inside this process on 127.0.0.1, on the
/// caller's tokio runtime: what the tests run queries on.
pub struct LocalCluster {
    pub url: ClusterUrl,
    scheduler: tokio::task::JoinHandle<Result<()>>,
    executors: Vec<tokio::task::JoinHandle<Result<()>>>,
}

/// How long [`LocalCluster::start`] waits for its executors to register, and how
/// many times it starts an executor that ended before registering.
const REGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
const EXECUTOR_STARTS: usize = 4;

impl LocalCluster {
    /// A scheduler and `executors` executors of `slots` task slots each, once every
    /// executor has registered. An executor that ends before then (its ports, picked
    /// free, taken meanwhile by another process; its registration refused) is
    /// started again on new ports, a few times; the error names why each ended.
    pub async fn start(executors: usize, slots: usize, functions: Functions) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let url = ClusterUrl {
            host: "127.0.0.1".into(),
            port: addr.port(),
        };
        let scheduler = tokio::spawn(serve_scheduler(listener, functions.clone()));
        let mut cluster = Self {
            url,
            scheduler,
            executors: Vec::new(),
        };
        for _ in 0..executors {
            let executor = cluster.spawn_executor(slots, &functions)?;
            cluster.executors.push(executor);
        }
        cluster
            .wait_for_executors(executors, slots, &functions)
            .await?;
        Ok(cluster)
    }

    fn spawn_executor(
        &self,
        slots: usize,
        functions: &Functions,
    ) -> Result<tokio::task::JoinHandle<Result<()>>> {
        let options = ExecutorOptions {
            scheduler: self.url.clone(),
            host: "127.0.0.1".into(),
            port: free_port("127.0.0.1")?,
            grpc_port: free_port("127.0.0.1")?,
            slots,
            work_dir: None,
        };
        Ok(tokio::spawn(run_executor(options, functions.clone())))
    }

    /// Waits until `n` executors have registered with the scheduler, starting again
    /// those that end first.
    async fn wait_for_executors(
        &mut self,
        n: usize,
        slots: usize,
        functions: &Functions,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + REGISTER_WAIT;
        let mut ended: Vec<String> = Vec::new();
        let mut registered = 0;
        while tokio::time::Instant::now() < deadline {
            if self.scheduler.is_finished() {
                let why = ended_because(&mut self.scheduler).await;
                return Err(ballista_error(
                    &self.url.to_string(),
                    format!("the scheduler ended before its executors registered: {why}"),
                ));
            }
            for i in 0..self.executors.len() {
                if !self.executors[i].is_finished() {
                    continue;
                }
                let why = ended_because(&mut self.executors[i]).await;
                ended.push(why);
                if ended.len() > EXECUTOR_STARTS * n {
                    return Err(ballista_error(
                        &self.url.to_string(),
                        format!(
                            "executors keep ending before they register: {}",
                            ended.join("; ")
                        ),
                    ));
                }
                log::warn!(
                    "an executor ended before registering ({}); starting another",
                    ended.last().map(String::as_str).unwrap_or_default()
                );
                self.executors[i] = self.spawn_executor(slots, functions)?;
            }
            registered = executor_count(&self.url).await.unwrap_or(0);
            if registered >= n {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut message = format!(
            "{registered} of {n} executors registered within {} s",
            REGISTER_WAIT.as_secs()
        );
        if !ended.is_empty() {
            message.push_str(&format!("; executors that ended: {}", ended.join("; ")));
        }
        Err(ballista_error(&self.url.to_string(), message))
    }
}

/// Why a task of a [`LocalCluster`] that has finished ended.
async fn ended_because(task: &mut tokio::task::JoinHandle<Result<()>>) -> String {
    match task.await {
        Ok(Ok(())) => "it stopped".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.scheduler.abort();
        for t in &self.executors {
            t.abort();
        }
    }
}

/// The body of the scheduler's reply to `GET path` on its port (its REST API, and
/// Flumen's job reports): both answer with a `Content-Length` body, read to the end
/// of the connection.
pub(crate) async fn http_get(url: &ClusterUrl, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = url.to_string();
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| ballista_error(&what, e))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.host, url.port
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        ballista_error(
            &what,
            format!("the scheduler's reply to {path} has no body"),
        )
    })?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(ballista_error(
            &what,
            format!("the scheduler answered {path} with '{status}' (is it `flumen scheduler`?)"),
        ));
    }
    Ok(body.to_string())
}

/// The executors registered with the scheduler at `url` and alive (its REST API,
/// `GET /api/executors`, served on the scheduler's port).
pub async fn executor_count(url: &ClusterUrl) -> Result<usize> {
    let body = http_get(url, "/api/executors").await?;
    let executors: Vec<serde_json::Value> = serde_json::from_str(body.trim()).map_err(|e| {
        ballista_error(
            &url.to_string(),
            format!("the scheduler's list of executors is not JSON: {e}"),
        )
    })?;
    Ok(executors.len())
}
