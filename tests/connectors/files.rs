//! The files source on a real local directory and a real S3-compatible server
//! (moto_server on 127.0.0.1:9000, started by scripts/services.sh).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flumen::connectors::object_store::{ObjectStoreExt, PutPayload};
use flumen::datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema};
use flumen::datafusion::arrow::record_batch::RecordBatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{sql_error, sql_rows, sql_session, strs, temp_dir};

/// Writes `name` in `dir` by writing elsewhere and renaming it in (as Spark asks), with
/// modification time `age_s` seconds in the past.
fn put(dir: &Path, name: &str, body: &[u8], age_s: u64) {
    // Named after the folder too: tests running at once write files of one name.
    let folder = dir.file_name().unwrap().to_string_lossy();
    let tmp = dir
        .parent()
        .unwrap()
        .join(format!("{folder}-{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, body).unwrap();
    let f = fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
        .unwrap();
    drop(f);
    fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn new_files_are_read_once_oldest_first_hidden_ones_ignored() {
    let dir = temp_dir("files-json");
    put(
        &dir,
        "before.json",
        b"{\"id\": 100, \"name\": \"old\"}\n",
        500,
    );
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM people (id BIGINT NOT NULL, name TEXT) WITH (connector = 'files', \
           path = '{}', format = 'json', on_error = 'dead_letter', max_files_per_batch = '1');
         CREATE SINK out WITH (connector = 'memory') AS SELECT id, name FROM people;",
        dir.display()
    ))
    .await
    .unwrap();
    // b is newer than a, so a comes first; hidden files are never read.
    put(
        &dir,
        "b.json",
        b"{\"id\": 3, \"name\": \"cy\"}\nnot json\n\n{\"id\": 4}\n",
        10,
    );
    put(
        &dir,
        "a.json",
        b"{\"id\": 1, \"name\": \"ann\"}\r\n{\"id\": 2, \"name\": \"bo\"}",
        20,
    );
    put(&dir, ".a.json.crc", b"garbage", 30);
    put(&dir, "_SUCCESS", b"", 30);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["1|ann", "2|bo"])
    );
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["1|ann", "2|bo", "3|cy", "4|NULL"])
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT position, record FROM people_errors").await,
        vec![format!("{}/b.json line 2|not json", dir.display())]
    );
    // A file taken once is not read again, even when it changes.
    fs::write(dir.join("a.json"), b"{\"id\": 9, \"name\": \"again\"}\n").unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT count(*) FROM out").await,
        vec!["4"]
    );
    s.stop_all().await.unwrap();
}

/// With a backlog, the next batch's files are read ahead while a batch runs: rows stay
/// in file order, a file that slipped in before the expected one is read in its turn,
/// and a bad file fails the batch that takes it, not the one that read it ahead.
#[tokio::test]
async fn read_ahead_keeps_order_and_fails_only_the_batch_that_takes_a_bad_file() {
    let dir = temp_dir("files-ahead");
    put(&dir, "1.csv", b"1\n2\n", 50);
    put(&dir, "2.csv", b"3\n", 40);
    put(&dir, "3.csv", b"4\nfour\n", 30);
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM n (v BIGINT NOT NULL) WITH (connector = 'files', path = '{}', \
           format = 'csv', include_existing = 'true', max_files_per_batch = '1');
         CREATE SINK out WITH (connector = 'memory') AS SELECT v FROM n;",
        dir.display()
    ))
    .await
    .unwrap();
    // Batch 1 takes 1.csv and reads 2.csv ahead; 0.csv then appears, older than 2.csv.
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    put(&dir, "0.csv", b"0\n", 45);
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT v FROM out").await,
        strs(&["1", "2", "0", "3"])
    );
    // 3.csv (read ahead during the last batch) has a bad line: the next batch fails.
    let e = sql_error(&mut s, "ADVANCE 1 BATCHES").await;
    assert!(
        e.contains(&format!("{}/3.csv line 2", dir.display())),
        "{e}"
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT v FROM out").await,
        strs(&["1", "2", "0", "3"])
    );
}

#[tokio::test]
async fn csv_with_header_parquet_and_arrow_files() {
    let csv = temp_dir("files-csv");
    put(&csv, "x.csv", b"id,name\n1,ann\n2,bo\n", 5);
    let pq = temp_dir("files-parquet");
    let arrow = temp_dir("files-arrow");
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM c (id BIGINT, name TEXT) WITH (connector = 'files', path = 'file://{}', \
           format = 'csv', header = 'true', include_existing = 'true');
         CREATE STREAM p (id INT, name TEXT, missing TEXT) WITH (connector = 'files', path = '{}', format = 'parquet');
         CREATE STREAM a (id BIGINT, score DOUBLE) WITH (connector = 'files', path = '{}', format = 'arrow');
         CREATE SINK out WITH (connector = 'memory') AS
           SELECT 'c' AS src, id, name FROM c
           UNION ALL SELECT 'p', CAST(id AS BIGINT), name || coalesce(missing, '-') FROM p
           UNION ALL SELECT 'a', id, CAST(score AS TEXT) FROM a;",
        csv.display(),
        pq.display(),
        arrow.display()
    ))
    .await
    .unwrap();
    // Parquet: more columns than declared, and id as BIGINT where INT is declared.
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("extra", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![0.5, 1.5])),
            Arc::new(StringArray::from(vec!["pa", "pb"])),
            Arc::new(Int64Array::from(vec![10, 11])),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w =
        flumen::datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    put(&pq, "part-0.parquet", &buf, 1);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("score", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![20])),
            Arc::new(Float64Array::from(vec![2.5])),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w =
        flumen::datafusion::arrow::ipc::writer::FileWriter::try_new(&mut buf, &batch.schema())
            .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    put(&arrow, "x.arrow", &buf, 1);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["c|1|ann", "c|2|bo", "p|10|pa-", "p|11|pb-", "a|20|2.5"])
    );
    // A file that is not Parquet stops the query (on_error = 'fail'), naming the file.
    put(&pq, "broken.parquet", b"PAR1 not really", 1);
    let err = sql_error(&mut s, "ADVANCE 1 BATCHES").await;
    assert!(
        err.contains(&format!(
            "source 'p': bad input at {}/broken.parquet: not a Parquet file",
            pq.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn files_options_are_checked() {
    let mut s = sql_session();
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x WITH (connector = 'files', path = '/no/such/dir')"
        )
        .await,
        "stream x: directory '/no/such/dir': No such file or directory (os error 2)"
    );
    assert_eq!(
        sql_error(&mut s, "CREATE STREAM x WITH (connector = 'files')").await,
        "stream x: connector 'files' needs path = '<directory or s3:// / memory:// URL>'"
    );
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x (a INT) WITH (connector = 'files', path = '/tmp', format = 'orc')"
        )
        .await,
        "stream x: unknown format 'orc' for connector 'files'; accepted: text, csv, json, parquet, arrow"
    );
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x WITH (connector = 'files', path = 'hdfs://nn/x')"
        )
        .await,
        "stream x: unknown URL scheme 'hdfs://' in 'hdfs://nn/x'; accepted: a local path, file://, s3://, memory://"
    );
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x WITH (connector = 'files', path = '/tmp', max_records_per_batch = '10')"
        )
        .await,
        "stream x: connector 'files' cannot cap the records of a batch (max_records_per_batch, backpressure); a batch takes whole files: use max_files_per_batch"
    );
}

/// Creates a bucket on the S3 server with one plain request (moto needs no signature
/// for it); object_store has no bucket API.
pub(crate) async fn create_bucket(name: &str) {
    let mut conn = tokio::net::TcpStream::connect("127.0.0.1:9000")
        .await
        .expect("no S3 server on 127.0.0.1:9000: run scripts/services.sh start");
    conn.write_all(
        format!("PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// `url` (`s3://bucket/folder`) on the S3 server of scripts/services.sh.
pub(crate) fn moto_location(url: &str) -> flumen::connectors::store::Location {
    flumen::connectors::store::open(
        "test",
        url,
        &[
            ("endpoint", "http://127.0.0.1:9000"),
            ("region", "us-east-1"),
            ("access_key_id", "test"),
            ("secret_access_key", "test"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_s3_bucket_on_a_real_s3_server() {
    let bucket = format!("flumen-files-{}", std::process::id());
    create_bucket(&bucket).await;
    let opts = "endpoint = 'http://127.0.0.1:9000', region = 'us-east-1', \
                access_key_id = 'test', secret_access_key = 'test'";
    let url = format!("s3://{bucket}/in");
    let store = moto_location(&url);
    let put = |name: &str, body: &'static str| {
        let store = store.clone();
        let path = store.child(name);
        async move {
            store
                .store
                .put(&path, PutPayload::from_static(body.as_bytes()))
                .await
                .unwrap();
        }
    };
    put("existing.csv", "0,zero\n").await;
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM nums (n BIGINT, word TEXT) WITH (connector = 'files', path = '{url}', format = 'csv', {opts});
         CREATE SINK out WITH (connector = 'memory') AS SELECT n, word FROM nums;"
    ))
    .await
    .unwrap();
    put("one.csv", "1,one\n2,two\n").await;
    put("_temporary", "9,hidden\n").await;
    put("sub/deeper.csv", "8,nested\n").await;
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["1|one", "2|two"])
    );
    put("two.csv", "3,three\n").await;
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["1|one", "2|two", "3|three"])
    );
    s.stop_all().await.unwrap();
}

/// A file of 100,000 lines is decoded in slices on several threads: every row once, in
/// file order, and bad lines in either slice reported at their own line numbers; under
/// on_error = 'fail' the first bad line (in file order) is the one named.
#[tokio::test]
async fn a_large_file_is_decoded_in_parallel_slices_in_order() {
    let dir = temp_dir("files-large");
    let mut body = String::new();
    for i in 0..100_000u64 {
        match i {
            10 => body.push_str("oops,1\n"),
            90_000 => body.push_str("bad,2\n"),
            _ => body.push_str(&format!("{i},{}\n", i % 7)),
        }
    }
    put(&dir, "big.csv", body.as_bytes(), 10);
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM big (id BIGINT, v BIGINT) WITH (connector = 'files', path = '{}',
           format = 'csv', include_existing = 'true', on_error = 'dead_letter');
         CREATE SINK out WITH (connector = 'memory') AS SELECT id, v FROM big;",
        dir.display()
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    let expected_sum: u64 = (0..100_000u64).filter(|i| *i != 10 && *i != 90_000).sum();
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(*), sum(id), min(id), max(id) FROM out"
        )
        .await,
        vec![format!("99998|{expected_sum}|0|99999")]
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT position FROM big_errors ORDER BY position").await,
        vec![
            format!("{}/big.csv line 11", dir.display()),
            format!("{}/big.csv line 90001", dir.display()),
        ]
    );
    s.stop_all().await.unwrap();

    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM big (id BIGINT, v BIGINT) WITH (connector = 'files', path = '{}',
           format = 'csv', include_existing = 'true');
         CREATE SINK out WITH (connector = 'memory') AS SELECT id, v FROM big;",
        dir.display()
    ))
    .await
    .unwrap();
    let err = s
        .execute("ADVANCE 1 BATCHES")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("bad record at {}/big.csv line 11:", dir.display())),
        "{err}"
    );
}

/// A text file of over 4 MiB is cut into lines on several threads straight from its
/// bytes: every line once and whole (blank lines kept, `\r\n` endings lose the `\r`,
/// multi-byte characters intact, the last line without a newline).
#[tokio::test]
async fn a_large_text_file_is_split_into_lines_on_every_core() {
    let dir = temp_dir("files-large-text");
    let lines: Vec<String> = (0..300_000u64)
        .map(|i| match i % 1000 {
            500 => String::new(),
            _ => format!("{i} héllo wörld"),
        })
        .collect();
    let mut body = String::new();
    for (i, l) in lines.iter().enumerate() {
        body.push_str(l);
        if i + 1 < lines.len() {
            body.push_str(if i % 7 == 0 { "\r\n" } else { "\n" });
        }
    }
    assert!(body.len() > 4 << 20);
    put(&dir, "big.txt", body.as_bytes(), 10);
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM big (line TEXT) WITH (connector = 'files', path = '{}',
           format = 'text', include_existing = 'true');
         CREATE SINK out WITH (connector = 'memory') AS SELECT line FROM big;",
        dir.display()
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    let chars: usize = lines.iter().map(|l| l.chars().count()).sum();
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(*), sum(character_length(line)), count(*) FILTER (WHERE line = ''),
                    count(*) FILTER (WHERE strpos(line, chr(13)) > 0)
             FROM out"
        )
        .await,
        vec![format!("300000|{chars}|300|0")]
    );
    let numbered: u64 = (0..300_000u64).filter(|i| i % 1000 != 500).sum();
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(DISTINCT line), sum(CAST(split_part(line, ' ', 1) AS BIGINT)),
                    min(line), max(line)
             FROM out WHERE line <> ''"
        )
        .await,
        vec![format!("299700|{numbered}|0 héllo wörld|99999 héllo wörld")]
    );
    s.stop_all().await.unwrap();
}

/// A CSV query parses only the columns it reads (Spark's CSV column pruning): a bad
/// value in a column no query reads is not seen, one in a column read is rejected;
/// NOT NULL columns left unread still make valid batches; a query reading every column
/// (here a second sink on the same stream, which reads `v`) sees every value.
#[tokio::test]
async fn csv_columns_no_query_reads_are_not_parsed() {
    let dir = temp_dir("files-csv-projection");
    // Enough lines for the parallel decode (65,536), then a line whose `v` is bad.
    let mut body = String::new();
    for i in 0..70_000u64 {
        body.push_str(&format!("{i},n{},{}\n", i % 3, i % 10));
    }
    body.push_str("70000,last,oops\n");
    put(&dir, "x.csv", body.as_bytes(), 5);
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM a (id BIGINT NOT NULL, name TEXT, v BIGINT NOT NULL)
           WITH (connector = 'files', path = '{d}', format = 'csv', include_existing = 'true',
                 on_error = 'dead_letter');
         CREATE STREAM b (id BIGINT NOT NULL, name TEXT, v BIGINT NOT NULL)
           WITH (connector = 'files', path = '{d}', format = 'csv', include_existing = 'true',
                 on_error = 'dead_letter');
         CREATE SINK names WITH (connector = 'memory') AS SELECT id, name FROM a;
         CREATE SINK values_ WITH (connector = 'memory') AS SELECT name, v FROM b;",
        d = dir.display()
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(*), sum(id), max(name) FILTER (WHERE id = 70000) FROM names"
        )
        .await,
        vec![format!("70001|{}|last", (0..=70_000u64).sum::<u64>())]
    );
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(*), sum(v), count(DISTINCT name) FROM values_"
        )
        .await,
        vec!["70000|315000|3".to_string()]
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT position FROM b_errors").await,
        vec![format!("{}/x.csv line 70001", dir.display())]
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT count(*) FROM a_errors").await,
        vec!["0"]
    );
    s.stop_all().await.unwrap();
}

/// A session on `clock`: a restarted query goes on on the same batch grid.
fn clocked_session(clock: &Arc<flumen::engine::ManualClock>) -> flumen::sql::FlumenSession {
    flumen::sql::FlumenSession::new(
        flumen::connectors::registry(),
        Arc::clone(clock) as Arc<dyn flumen::engine::Clock>,
    )
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w =
        flumen::datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None)
            .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf
}

/// A value that does not convert exactly into its declared type is a bad record in
/// every format — never a NULL, a truncated number or an infinity. JSON fields the
/// stream does not declare are ignored unless `strict = 'true'`.
#[tokio::test]
async fn values_that_do_not_fit_their_type_are_bad_records() {
    let json = temp_dir("files-exact-json");
    let strict = temp_dir("files-exact-strict");
    let csv = temp_dir("files-exact-csv");
    let pq = temp_dir("files-exact-parquet");
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM j (id BIGINT, x DOUBLE) WITH (connector = 'files', path = '{}',
           format = 'json', on_error = 'dead_letter');
         CREATE STREAM js (id BIGINT) WITH (connector = 'files', path = '{}',
           format = 'json', strict = 'true', on_error = 'dead_letter');
         CREATE STREAM c (id INT, x DOUBLE) WITH (connector = 'files', path = '{}',
           format = 'csv', on_error = 'dead_letter');
         CREATE STREAM p (id BIGINT, small INT) WITH (connector = 'files', path = '{}',
           format = 'parquet', on_error = 'dead_letter');
         CREATE SINK out WITH (connector = 'memory') AS
           SELECT 'j' AS s, id, x FROM j UNION ALL SELECT 'js', id, NULL FROM js
           UNION ALL SELECT 'c', CAST(id AS BIGINT), x FROM c
           UNION ALL SELECT 'p', id, CAST(small AS DOUBLE) FROM p;",
        json.display(),
        strict.display(),
        csv.display(),
        pq.display()
    ))
    .await
    .unwrap();
    put(
        &json,
        "a.json",
        b"{\"id\": 1, \"x\": 0.5, \"extra\": \"ignored\"}\n{\"id\": 1.5, \"x\": 1}\n{\"id\": 3, \"x\": 1e400}\n{\"id\": \"4\", \"x\": \"2.5\"}\n",
        5,
    );
    put(
        &strict,
        "a.json",
        b"{\"id\": 1}\n{\"id\": 2, \"extra\": 0}\n",
        5,
    );
    put(&csv, "a.csv", b"1,0.25\n2,1e999\n3000000000,1\n4,-4\n", 5);
    // Parquet: one BIGINT column declared INT with a value that overflows it.
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("small", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Int64Array::from(vec![7, 5_000_000_000, 9])),
        ],
    )
    .unwrap();
    put(&pq, "a.parquet", &parquet_bytes(&batch), 5);
    // A string column declared BIGINT: the whole file.
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["x", "y"]))],
    )
    .unwrap();
    put(&pq, "b.parquet", &parquet_bytes(&batch), 4);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&[
            "j|1|0.5",
            "j|4|2.5",
            "js|1|NULL",
            "c|1|0.25",
            "c|4|-4.0",
            "p|1|7.0",
            "p|3|9.0"
        ])
    );
    let errors: Vec<String> = sql_rows(
        &mut s,
        "SELECT source, error FROM j_errors UNION ALL SELECT source, error FROM js_errors
         UNION ALL SELECT source, error FROM c_errors UNION ALL SELECT source, error FROM p_errors",
    )
    .await;
    assert_eq!(errors.len(), 7, "{errors:?}");
    for expected in [
        "j|column id: 1.5 is not a Int64 value",
        "j|column x: 1e400 is not a Float64 value",
        "js|",
        "c|column x: 1e999 is not a Float64 value",
        "p|column small (Int64 in the file): 5000000000 is not a Int32 value",
        "p|column id is Utf8 in the file, declared Int64",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "no error starting {expected:?} in {errors:?}"
        );
    }
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("c|") && e.contains("3000000000")),
        "{errors:?}"
    );
}

/// A batch takes a file; the query stops before it is committed; the file is deleted;
/// the restart runs the batch again and finds the file gone: under `on_error = 'skip'`
/// it is counted and the query goes on, under `fail` the restart fails naming it.
#[tokio::test]
async fn a_file_gone_before_a_replay_follows_on_error() {
    for on_error in ["skip", "fail"] {
        let dir = temp_dir("files-gone");
        let cp = temp_dir("files-gone-cp");
        let script = format!(
            "SET checkpoint_location = '{}';
             CREATE STREAM l (line TEXT) WITH (connector = 'files', path = '{}', on_error = '{on_error}');
             CREATE SINK out WITH (connector = 'memory') AS SELECT line FROM l;",
            cp.display(),
            dir.display()
        );
        let clock = Arc::new(flumen::engine::ManualClock::default());
        let mut s = clocked_session(&clock);
        s.execute_script(&script).await.unwrap();
        put(&dir, "a.txt", b"a\n", 5);
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        s.stop_all().await.unwrap();
        // As if killed after batch 0 was planned, before it committed.
        let q = cp.join("queries").join("out");
        fs::remove_dir_all(q.join("commits")).unwrap();
        fs::remove_dir_all(q.join("state")).ok();
        fs::remove_file(dir.join("a.txt")).unwrap();
        put(&dir, "b.txt", b"b\n", 1);
        let mut s = clocked_session(&clock);
        let started = s.execute_script(&script).await;
        if on_error == "fail" {
            let err = started.unwrap_err().to_string();
            assert!(
                err.contains(&format!("{}/a.txt", dir.display()))
                    && err.contains("the file is gone"),
                "{err}"
            );
            continue;
        }
        started.unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        assert_eq!(sql_rows(&mut s, "SELECT * FROM out").await, strs(&["b"]));
        // Counted as rejected (column rejected_rows of SHOW QUERIES).
        let shown = sql_rows(&mut s, "SHOW QUERIES").await;
        assert_eq!(shown[0].split('|').nth(7), Some("1"), "{shown:?}");
        s.stop_all().await.unwrap();
    }
}

/// Files that arrive while a checkpointed query runs and while it is stopped are all
/// read once after a graceful restart, whatever their modification times — the
/// query remembers which files it took, not the newest time (the restart used to
/// treat everything in the folder as "existing").
#[tokio::test]
async fn after_a_graceful_restart_every_file_not_taken_is_read() {
    for include_existing in [false, true] {
        let dir = temp_dir("files-restart");
        let cp = temp_dir("files-restart-cp");
        put(&dir, "old.txt", b"old\n", 1000);
        let script = format!(
            "SET checkpoint_location = '{}';
             CREATE STREAM l (line TEXT) WITH (connector = 'files', path = '{}',
               include_existing = '{include_existing}', max_files_per_batch = '2');
             CREATE SINK out WITH (connector = 'files', path = '{}', format = 'json') AS SELECT line FROM l;",
            cp.display(),
            dir.display(),
            dir.parent().unwrap().join(format!("{}-out", dir.file_name().unwrap().to_string_lossy())).display()
        );
        let out = dir.parent().unwrap().join(format!(
            "{}-out",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let clock = Arc::new(flumen::engine::ManualClock::default());
        let mut s = clocked_session(&clock);
        s.execute_script(&script).await.unwrap();
        // Ten files, all with the same modification time, while the query runs.
        for i in 0..10 {
            put(&dir, &format!("f{i}.txt"), format!("f{i}\n").as_bytes(), 50);
        }
        s.execute("ADVANCE 2 BATCHES").await.unwrap();
        s.stop_all().await.unwrap();
        // While stopped: one more, older than every file taken.
        put(&dir, "late.txt", b"late\n", 500);
        let mut s = clocked_session(&clock);
        s.execute_script(&script).await.unwrap();
        s.execute("ADVANCE 8 BATCHES").await.unwrap();
        s.stop_all().await.unwrap();
        let mut lines = Vec::new();
        for e in fs::read_dir(&out).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                for l in fs::read_to_string(&p).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    lines.push(v["line"].as_str().unwrap().to_string());
                }
            }
        }
        lines.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        expected.push("late".into());
        if include_existing {
            expected.push("old".into());
        }
        expected.sort();
        assert_eq!(lines, expected, "include_existing = {include_existing}");
    }
}

/// A kill between a batch's commit and its seen-files log entry, twice in a row (the
/// second time after an empty batch): the file that batch took is still never read
/// again — the batch after a restart carries the unlogged files in its offsets.
#[tokio::test]
async fn a_file_whose_log_entry_was_lost_to_two_kills_is_read_once() {
    let dir = temp_dir("files-unlogged");
    let cp = temp_dir("files-unlogged-cp");
    let out = temp_dir("files-unlogged-out");
    let script = format!(
        "SET checkpoint_location = '{}';
         CREATE STREAM l (line TEXT) WITH (connector = 'files', path = '{}');
         CREATE SINK out WITH (connector = 'files', path = '{}', format = 'json') AS SELECT line FROM l;",
        cp.display(),
        dir.display(),
        out.display()
    );
    let seen = cp.join("queries").join("out").join("sources").join("l");
    // As if killed after the checkpoint's commit, before the seen-files log entry.
    let lose_log_entries = || {
        for e in fs::read_dir(&seen).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "existing" {
                fs::remove_file(p).unwrap();
            }
        }
    };
    let clock = Arc::new(flumen::engine::ManualClock::default());
    let mut s = clocked_session(&clock);
    s.execute_script(&script).await.unwrap();
    put(&dir, "a.txt", b"a\n", 5);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    lose_log_entries();
    // A restart that runs one empty batch, and loses its log entry too.
    let mut s = clocked_session(&clock);
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    lose_log_entries();
    let mut s = clocked_session(&clock);
    s.execute_script(&script).await.unwrap();
    put(&dir, "b.txt", b"b\n", 1);
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    let mut lines = Vec::new();
    for e in fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            for l in fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                lines.push(v["line"].as_str().unwrap().to_string());
            }
        }
    }
    lines.sort();
    assert_eq!(lines, strs(&["a", "b"]));
}

/// `<stream>_errors` is a stream: a sink archives a stream's bad records to files (and
/// a query may join them with anything else), while `SELECT` outside a query still
/// reads the dead-letter table. A stream without `on_error = 'dead_letter'` has none.
#[tokio::test]
async fn bad_records_are_a_stream_a_sink_can_archive() {
    let dir = temp_dir("files-errors-stream");
    let archive = temp_dir("files-errors-archive");
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM people (id BIGINT, name TEXT) WITH (connector = 'files', path = '{}',
           format = 'csv', on_error = 'dead_letter');
         CREATE SINK good WITH (connector = 'memory') AS SELECT id, name FROM people;
         CREATE SINK bad WITH (connector = 'files', path = '{}', format = 'json') AS
           SELECT position, record, error, _batch_time FROM people_errors;
         CREATE SINK per_file WITH (connector = 'memory') AS
           SELECT split_part(position, ' ', 1) AS file, count(*) AS n FROM people_errors
           GROUP BY split_part(position, ' ', 1);",
        dir.display(),
        archive.display()
    ))
    .await
    .unwrap();
    put(&dir, "a.csv", b"1,ann\nx,bob\n3,cy\n4\n", 5);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    put(&dir, "b.csv", b"5,dee\n", 1);
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT id FROM good ORDER BY id").await,
        strs(&["1", "3", "5"])
    );
    let mut archived = Vec::new();
    for e in fs::read_dir(&archive).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            for l in fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                archived.push(format!(
                    "{}|{}|{}",
                    v["position"].as_str().unwrap(),
                    v["record"].as_str().unwrap(),
                    v["_batch_time"].is_string() || v["_batch_time"].is_number()
                ));
            }
        }
    }
    archived.sort();
    assert_eq!(
        archived,
        vec![
            format!("{}/a.csv line 2|x,bob|true", dir.display()),
            format!("{}/a.csv line 4|4|true", dir.display()),
        ]
    );
    // A running count over the errors stream, and the dead-letter table as before.
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM per_file").await,
        vec![format!("{}/a.csv|2", dir.display())]
    );
    // Each of the three queries reading `people` reports the bad records it read.
    assert_eq!(
        sql_rows(
            &mut s,
            "SELECT count(*), count(DISTINCT position) FROM people_errors"
        )
        .await,
        strs(&["6|2"])
    );
    s.stop_all().await.unwrap();

    let mut s = sql_session();
    s.execute(&format!(
        "CREATE STREAM quiet (id BIGINT) WITH (connector = 'files', path = '{}', format = 'csv')",
        dir.display()
    ))
    .await
    .unwrap();
    let err = sql_error(
        &mut s,
        "CREATE SINK x WITH (connector = 'memory') AS SELECT * FROM quiet_errors",
    )
    .await;
    assert!(err.contains("quiet_errors"), "{err}");
}

/// A row a query's expression fails on (`CAST('x0' AS BIGINT)`) follows its stream's
/// `on_error`: set aside (counted, and written to `<stream>_errors` under
/// `dead_letter`) while the batch's other rows go on, into a running sum too; under
/// `fail` the query fails naming the stream, the batch, the row and the error.
#[tokio::test]
async fn rows_a_query_expression_fails_on_follow_on_error() {
    row_errors_follow_on_error(None).await;
}

/// The test above with its queries' batches on the cluster at `cluster` (`SET
/// cluster`), or in this process.
pub(crate) async fn row_errors_follow_on_error(cluster: Option<&str>) {
    for on_error in ["dead_letter", "skip", "fail"] {
        let dir = temp_dir("files-row-errors");
        let mut s = sql_session();
        if let Some(url) = cluster {
            s.execute(&format!("SET cluster = '{url}'")).await.unwrap();
        }
        s.execute_script(&format!(
            "CREATE STREAM l (line TEXT) WITH (connector = 'files', path = '{}',
               on_error = '{on_error}');
             CREATE SINK out WITH (connector = 'memory') AS
               SELECT CAST(line AS BIGINT) AS n FROM l WHERE line <> 'skipped';
             CREATE TABLE total AS SELECT sum(CAST(line AS BIGINT)) AS s FROM l;",
            dir.display()
        ))
        .await
        .unwrap();
        put(
            &dir,
            "a.txt",
            b"1\nx0\n3\nskipped\n40\n9999999999999999999999\n",
            5,
        );
        let advanced = s.execute("ADVANCE 1 BATCHES").await;
        if on_error == "fail" {
            let err = advanced.unwrap_err().to_string();
            assert!(err.contains("on_error = 'skip' or 'dead_letter'"), "{err}");
            // ADVANCE answers at the first failure; the other query fails on its own.
            for q in s.queries() {
                assert!(q.ctx.await_termination().await.is_err(), "query {}", q.id);
            }
            let shown = sql_rows(&mut s, "SHOW QUERIES").await;
            let failed: Vec<&String> = shown.iter().filter(|r| r.contains("|failed|")).collect();
            assert_eq!(failed.len(), 2, "{shown:?}");
            // On a cluster too: the executors read the batch, the driver reads it
            // again to find the row, and runs the query's part over it here.
            assert!(
                failed[0].contains(
                    "stream l: the query failed on row 1 of batch 1000 ms: Arrow error: Cast error: Cannot cast string 'x0' to value of Int64 type; the row: {\"line\":\"x0\"}"
                ),
                "{failed:?}"
            );
            continue;
        }
        advanced.unwrap();
        assert_eq!(
            sql_rows(&mut s, "SELECT n FROM out ORDER BY n").await,
            strs(&["1", "3", "40"])
        );
        assert_eq!(sql_rows(&mut s, "SELECT s FROM total").await, strs(&["44"]));
        // Each query sets aside the rows it fails on ('skipped' only fails the
        // query that does not filter it out): rejected_rows counts them per query.
        let shown = sql_rows(&mut s, "SHOW QUERIES").await;
        let rejected: Vec<Option<&str>> = shown.iter().map(|r| r.split('|').nth(7)).collect();
        assert_eq!(rejected, vec![Some("2"), Some("3")], "{shown:?}");
        if on_error == "dead_letter" {
            let errors = sql_rows(
                &mut s,
                "SELECT DISTINCT position, record FROM l_errors ORDER BY position",
            )
            .await;
            assert_eq!(
                errors,
                strs(&[
                    "batch 1000 ms row 1|{\"line\":\"x0\"}",
                    "batch 1000 ms row 3|{\"line\":\"skipped\"}",
                    "batch 1000 ms row 5|{\"line\":\"9999999999999999999999\"}"
                ])
            );
        }
        s.stop_all().await.unwrap();
    }
}
