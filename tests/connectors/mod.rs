//! Connectors against the real systems they name, started on 127.0.0.1 by the tests.

mod files;
mod files_sink;
pub(crate) mod kafka;
mod socket;
