//! # flumen-sql
//!
//! The SQL surface of Flumen (`CREATE STREAM`, `CREATE SINK`, windows, watermarks),
//! planned through DataFusion onto the engine. Not built yet: see issue 3; the crate
//! exists so the workspace has its final shape.
//!
//! ```text
//!   SQL text ─▶ sqlparser ─▶ Flumen statements ─▶ catalog ─▶ engine pipeline
//! ```

pub use flumen_engine as engine;
