//! Connectors against the real systems they name, started on 127.0.0.1 by the tests.

pub(crate) mod files;
mod files_sink;
pub(crate) mod kafka;
mod socket;
mod tls;
