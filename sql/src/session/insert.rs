//! `INSERT INTO`: a sink (starts a query), a memory stream (rows for its readers'
//! next batch), or one of DataFusion's tables.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::{Error, Result, plan_err};

use super::queries::Target;
use super::resolve::is_memory_connector;
use super::{FlumenSession, StatementResult, plan_batch_dataframe};
use crate::catalog::StreamKind;
use crate::query::ParsedQuery;
use crate::statement::ObjectKind;

impl FlumenSession {
    /// `INSERT INTO target <query>`; `sql` is the whole statement, for DataFusion.
    pub(super) async fn insert(
        &mut self,
        target: &str,
        sql: &str,
        query: &std::result::Result<ParsedQuery, String>,
    ) -> Result<StatementResult> {
        let kind = self.catalog.kind_of(target);
        let query = match (kind, query) {
            (None, _) => return self.datafusion(sql).await,
            (Some(_), Ok(q)) => q,
            (Some(_), Err(e)) => return Err(Error::Plan(e.clone())),
        };
        match kind {
            Some(ObjectKind::Sink) => {
                let (id, _) = self
                    .start_query(query, Target::Sink(target.to_string()))
                    .await?;
                Ok(StatementResult::Done(format!(
                    "Query {id} writes to sink '{target}'{}",
                    self.queries.state_warnings(id)
                )))
            }
            Some(ObjectKind::Table) => {
                plan_err!("'{target}' is maintained by a query; it cannot be inserted into")
            }
            Some(ObjectKind::Stream) => self.insert_into_stream(target, query).await,
            None => unreachable!("DataFusion's tables are handled above"),
        }
    }

    /// Rows into a memory stream: every query reading it gets them in its next batch.
    async fn insert_into_stream(
        &mut self,
        name: &str,
        query: &ParsedQuery,
    ) -> Result<StatementResult> {
        let Some(def) = self.catalog.stream(name) else {
            return plan_err!("no stream named '{name}'");
        };
        let schema = def.schema;
        let memory =
            matches!(&def.kind, StreamKind::Source { connector } if is_memory_connector(connector));
        if !memory {
            return plan_err!(
                "INSERT INTO {name}: only memory streams take rows from SQL; this one reads its connector"
            );
        }
        let rows_of = async {
            let df = plan_batch_dataframe(&self.base, self.bind_batch(query)?).await?;
            df.collect().await.map_err(Error::from)
        };
        let batches = rows_of.await.map_err(|e| {
            let root = match &e {
                Error::DataFusion(d) => d.find_root().to_string(),
                other => other.to_string(),
            };
            Error::Plan(format!(
                "INSERT INTO {name}: {root}; nothing of this INSERT was accepted"
            ))
        })?;
        let mut rows = 0;
        let mut converted = Vec::new();
        for b in batches {
            if b.num_columns() != schema.fields().len() {
                return plan_err!(
                    "INSERT INTO {name}: {} values per row, the stream has {} columns",
                    b.num_columns(),
                    schema.fields().len()
                );
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    // Exactly or not at all: 'x' is not a BIGINT, 1.5 not an INT.
                    flumen_engine::exact::cast_exact(c, f.data_type()).map_err(|e| {
                        Error::Plan(format!(
                            "INSERT INTO {name}: column '{}': {}; nothing of this INSERT was accepted",
                            f.name(),
                            e.message
                        ))
                    })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let b = RecordBatch::try_new(schema.clone(), cols)?;
            rows += b.num_rows();
            converted.push(b);
        }
        let live = self.catalog.feeds(name);
        if self.queries.readers_of(name).is_empty() || live.is_empty() {
            return plan_err!(
                "no running query reads stream '{name}', so these rows would be lost; start one \
                 first (CREATE SINK ... AS SELECT ... FROM {name})"
            );
        }
        for q in &live {
            q.push(converted.clone())?;
        }
        Ok(StatementResult::Done(format!(
            "{rows} rows into stream '{name}' for the next batch"
        )))
    }
}
