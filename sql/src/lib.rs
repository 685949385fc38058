//! # flumen-sql
//!
//! The SQL surface of Flumen: `CREATE STREAM`, `CREATE SINK`, `CREATE TABLE ... AS
//! SELECT`, `SET`, `SHOW`, `DESCRIBE`, `EXPLAIN`, planned through DataFusion onto the
//! engine. Entry point: [`FlumenSession::execute_script`].
//!
//! ```text
//!  SQL text ─▶ statement::split/parse ─▶ FlumenSession ─┬─ DDL: catalog (streams, sinks)
//!                                                      ├─ other SQL: DataFusion
//!                                                      └─ query over streams:
//!     per-query StreamingContext + session whose names resolve to that query's sources
//!       ─▶ DataFusion LogicalPlan ─▶ planner::plan_query (cut stateful nodes)
//!       ─▶ engine Stream ─▶ sink / table / console
//! ```

pub mod batch_time;
mod batch_windows;
pub mod catalog;
pub mod duration;
pub mod flink;
pub mod functions;
pub mod group_windows;
pub mod hidden;
mod join;
pub mod ksql;
pub mod lookup;
pub mod planner;
pub mod policy;
pub mod query;
pub mod session;
pub mod sql_function;
pub mod statement;
pub mod tvf;
pub mod ui;
pub mod window;

pub use flumen_engine as engine;
pub use planner::OutputMode;
pub use session::{
    ConsoleFormat, FlumenSession, QueryInfo, SessionView, Setting, Settings, StatementResult,
};
