//! The kafka source against a real Kafka-protocol broker (Tansu on 127.0.0.1:9092,
//! started by scripts/services.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use flumen::connectors::rskafka::client::partition::{Compression, UnknownTopicHandling};
use flumen::connectors::rskafka::client::{Client, ClientBuilder};
use flumen::connectors::rskafka::record::Record;

use crate::common::{sql_error, sql_rows, sql_session, strs};

pub const BROKER: &str = "127.0.0.1:9092";

/// A session that ran `script` (an `available_now` query) to its end, within 30 s.
async fn ran_to_end(script: &str) -> flumen::sql::FlumenSession {
    let mut s = sql_session();
    s.execute_script(script).await.unwrap();
    let ctx = s.queries().next().unwrap().ctx.clone();
    assert!(
        ctx.await_termination_timeout(Duration::from_secs(30))
            .await
            .unwrap()
    );
    s
}

pub async fn client() -> Client {
    tokio::time::timeout(
        Duration::from_secs(10),
        ClientBuilder::new(vec![BROKER.to_string()]).build(),
    )
    .await
    .expect("no Kafka broker on 127.0.0.1:9092: run scripts/services.sh start")
    .unwrap()
}

/// A topic name no earlier run used (the broker keeps its topics).
pub fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

pub async fn create_topic(c: &Client, topic: &str, partitions: i32) {
    c.controller_client()
        .unwrap()
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .unwrap();
}

pub async fn produce(c: &Client, topic: &str, partition: i32, values: &[&str]) {
    let pc = c
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let records = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(v.as_bytes().to_vec()),
            headers: BTreeMap::new(),
            timestamp: chrono_ms(1_700_000_000_000 + i as i64),
        })
        .collect();
    pc.produce(records, Compression::NoCompression)
        .await
        .unwrap();
}

fn chrono_ms(
    ms: i64,
) -> flumen::connectors::rskafka::chrono::DateTime<flumen::connectors::rskafka::chrono::Utc> {
    flumen::connectors::rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap()
}

#[tokio::test]
async fn offset_ranges_per_partition_with_metadata_columns_and_bad_records() {
    let c = client().await;
    let t = topic("people");
    create_topic(&c, &t, 2).await;
    produce(
        &c,
        &t,
        0,
        &[r#"{"id": 1, "name": "ann"}"#, r#"{"id": 2, "name": "bo"}"#],
    )
    .await;
    produce(
        &c,
        &t,
        1,
        &[r#"{"id": 3, "name": "cy"}"#, "not json", r#"{"id": 5}"#],
    )
    .await;
    let mut s = sql_session();
    s.execute_script(&format!(
        "SET batch_interval = '1 second';
         CREATE STREAM people (id BIGINT NOT NULL, name TEXT, _partition INT, _offset BIGINT, _key TEXT, _topic TEXT)
           WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = '{t}',
                 starting_offsets = 'earliest', format = 'json', on_error = 'dead_letter',
                 max_rate_per_partition = '2');
         CREATE SINK out WITH (connector = 'memory') AS
           SELECT id, name, _partition, _offset, _key, _topic = '{t}' FROM people;"
    ))
    .await
    .unwrap();
    // At most 2 records per partition per 1 s batch.
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    // The lag (the UI's and /metrics'): partition 1 holds a third record.
    let lag = |s: &flumen::sql::FlumenSession| {
        let q = s.queries().next().unwrap();
        q.ctx.recent_batches().last().unwrap().source_lag.clone()
    };
    assert_eq!(lag(&s), vec![("people".to_string(), 1)]);
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["1|ann|0|0|k0|true", "2|bo|0|1|k1|true", "3|cy|1|0|k0|true"])
    );
    assert_eq!(
        sql_rows(&mut s, "SELECT position, record FROM people_errors").await,
        vec![format!("{t}/1@1|not json")]
    );
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(lag(&s), vec![("people".to_string(), 0)]);
    // Records produced while the query runs are read by later batches.
    produce(&c, &t, 0, &[r#"{"id": 6, "name": "di"}"#]).await;
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT id, _partition, _offset FROM out").await,
        strs(&["1|0|0", "2|0|1", "3|1|0", "5|1|2", "6|0|2"])
    );
    s.stop_all().await.unwrap();
}

#[tokio::test]
async fn latest_skips_what_is_there_and_available_now_stops() {
    let c = client().await;
    let t = topic("latest");
    create_topic(&c, &t, 1).await;
    produce(&c, &t, 0, &["a,1", "b,2"]).await;
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM kv (k TEXT, v BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', \
           topic = '{t}', format = 'csv');
         CREATE TABLE totals AS SELECT k, sum(v) AS v FROM kv GROUP BY k;"
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    produce(&c, &t, 0, &["c,3", "c,4"]).await;
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM totals").await,
        strs(&["c|7"])
    );
    s.stop_all().await.unwrap();

    // available_now reads everything from the earliest offset and stops by itself.
    let mut s = ran_to_end(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM kv (k TEXT, v BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', \
           topic = '{t}', format = 'csv', starting_offsets = '{{\"{t}\": {{\"0\": 1}}}}');
         CREATE SINK out WITH (connector = 'memory') AS SELECT k, v FROM kv;"
    ))
    .await;
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM out").await,
        strs(&["b|2", "c|3", "c|4"])
    );
}

#[tokio::test]
async fn a_missing_topic_or_broker_is_a_clear_error() {
    let c = client().await;
    let t = topic("exists");
    create_topic(&c, &t, 1).await;
    let mut s = sql_session();
    s.execute(&format!(
        "CREATE STREAM nope (v TEXT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', \
           topic = 'no-such-topic-{}', format = 'raw')",
        std::process::id()
    ))
    .await
    .unwrap();
    let err = sql_error(
        &mut s,
        "CREATE SINK o WITH (connector = 'memory') AS SELECT v FROM nope",
    )
    .await;
    assert!(
        err.contains(&format!(
            "source 'nope': topic 'no-such-topic-{}' does not exist on {BROKER}; topics there: ",
            std::process::id()
        )),
        "{err}"
    );
    assert!(err.contains(&t), "{err}");

    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    s.execute(&format!(
        "CREATE STREAM gone (v TEXT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:{port}', \
           topic = 't', format = 'raw', timeout = '1 second')"
    ))
    .await
    .unwrap();
    let err = sql_error(
        &mut s,
        "CREATE SINK o2 WITH (connector = 'memory') AS SELECT v FROM gone",
    )
    .await;
    assert!(
        err.starts_with(&format!(
            "source 'gone': cannot connect (broker 127.0.0.1:{port}): "
        )),
        "{err}"
    );
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x (v TEXT) WITH (connector = 'kafka', bootstrap_servers = 'h:1', topic = 't', starting_offsets = 'first')"
        )
        .await,
        "stream x: starting_offsets 'first' is not earliest, latest (or smallest, largest) or a JSON object of offsets per partition"
    );
}

pub const POSTGRES: &str = "postgres://flumen@127.0.0.1:5432/flumen";
pub const MYSQL: &str = "mysql://flumen:flumen@127.0.0.1:3306/flumen";

/// The rows of `flumen_offsets` for `topic`, as `query|partition|offset`.
async fn stored_offsets(url: &str, topic: &str) -> Vec<String> {
    if url.starts_with("postgres") {
        use flumen::connectors::tokio_postgres;
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("no PostgreSQL on 127.0.0.1:5432: run scripts/services.sh start");
        tokio::spawn(conn);
        c.query(
            "SELECT query, \"partition\", \"offset\" FROM flumen_offsets WHERE topic = $1 \
             ORDER BY query, \"partition\"",
            &[&topic],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, i64>(2)
            )
        })
        .collect()
    } else {
        use flumen::connectors::mysql_async::prelude::Queryable;
        let mut c = flumen::connectors::mysql_async::Conn::from_url(url)
            .await
            .expect("no MariaDB on 127.0.0.1:3306: run scripts/services.sh start");
        let rows: Vec<(String, i32, i64)> = c
            .exec(
                "SELECT query, `partition`, `offset` FROM flumen_offsets WHERE topic = ? \
                 ORDER BY query, `partition`",
                (topic,),
            )
            .await
            .unwrap();
        rows.into_iter()
            .map(|(q, p, o)| format!("{q}|{p}|{o}"))
            .collect()
    }
}

/// Removes a row of `flumen_offsets`, as if the partition had appeared since.
async fn forget_partition(url: &str, topic: &str, partition: i32) {
    if url.starts_with("postgres") {
        use flumen::connectors::tokio_postgres;
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.execute(
            "DELETE FROM flumen_offsets WHERE topic = $1 AND \"partition\" = $2",
            &[&topic, &partition],
        )
        .await
        .unwrap();
    } else {
        use flumen::connectors::mysql_async::prelude::Queryable;
        let mut c = flumen::connectors::mysql_async::Conn::from_url(url)
            .await
            .unwrap();
        c.exec_drop(
            "DELETE FROM flumen_offsets WHERE topic = ? AND `partition` = ?",
            (topic, partition),
        )
        .await
        .unwrap();
    }
}

/// `offsets_store`: committed offsets go to flumen_offsets under the sink's name, and a
/// new session resumes from them; a partition the table does not know starts at
/// earliest, as one that appeared while the query was down.
async fn offsets_store_resumes(url: &str, name: &str) {
    let c = client().await;
    let t = topic(name);
    create_topic(&c, &t, 2).await;
    produce(&c, &t, 0, &["1", "2"]).await;
    produce(&c, &t, 1, &["3"]).await;
    let ddl = format!(
        "CREATE STREAM nums (v BIGINT, _partition INT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', \
           topic = '{t}', format = 'csv', starting_offsets = 'earliest', offsets_store = '{url}');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT v, _partition FROM nums;"
    );
    let mut s = sql_session();
    s.execute_script(&ddl).await.unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT v FROM seen ORDER BY v").await,
        strs(&["1", "2", "3"])
    );
    s.stop_all().await.unwrap();
    assert_eq!(
        stored_offsets(url, &t).await,
        strs(&["seen|0|2", "seen|1|1"])
    );

    // Restart: starting_offsets = 'earliest' is overridden by the stored offsets.
    produce(&c, &t, 0, &["4"]).await;
    produce(&c, &t, 1, &["5"]).await;
    forget_partition(url, &t, 1).await;
    let mut s = sql_session();
    s.execute_script(&ddl.replace("'earliest'", "'latest'"))
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    // Partition 0 resumes at offset 2; partition 1, unknown to the store, from earliest.
    assert_eq!(
        sql_rows(&mut s, "SELECT v, _partition FROM seen ORDER BY v").await,
        strs(&["3|1", "4|0", "5|1"])
    );
    s.stop_all().await.unwrap();
    assert_eq!(
        stored_offsets(url, &t).await,
        strs(&["seen|0|3", "seen|1|2"])
    );
}

#[tokio::test]
async fn offsets_store_in_postgres() {
    offsets_store_resumes(POSTGRES, "pg-offsets").await;
}

#[tokio::test]
async fn offsets_store_in_mariadb() {
    offsets_store_resumes(MYSQL, "my-offsets").await;
}

#[tokio::test]
async fn offsets_store_errors_name_the_database() {
    let mut s = sql_session();
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE STREAM x (v TEXT) WITH (connector = 'kafka', bootstrap_servers = 'h:1', topic = 't', \
               offsets_store = 'redis://u:pw@127.0.0.1/0')"
        )
        .await,
        "stream x: offsets_store 'redis://u:***@127.0.0.1/0' is not a postgres://user@host:port/db or mysql://user:password@host:port/db URL"
    );
    let c = client().await;
    let t = topic("offsets-down");
    create_topic(&c, &t, 1).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    s.execute(&format!(
        "CREATE STREAM y (v TEXT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = '{t}', \
           format = 'raw', timeout = '2 seconds', offsets_store = 'mysql://flumen:secret@127.0.0.1:{port}/flumen')"
    ))
    .await
    .unwrap();
    let err = sql_error(
        &mut s,
        "CREATE SINK o WITH (connector = 'memory') AS SELECT v FROM y",
    )
    .await;
    assert!(
        err.starts_with(&format!(
            "source 'y': offsets_store mysql://flumen:***@127.0.0.1:{port}/flumen: cannot connect: "
        )),
        "{err}"
    );
}

/// `SET kafka.bootstrap_servers` (ksqlDB's and Flink's session default) is the brokers
/// of every `kafka` stream and sink that names none: a sink writes there and a stream
/// reads it back; without it, the stream is refused naming both ways to give them.
#[tokio::test]
async fn the_session_gives_kafka_its_brokers() {
    let c = client().await;
    let t = topic("session-brokers");
    create_topic(&c, &t, 1).await;
    let mut s = sql_session();
    let e = sql_error(
        &mut s,
        &format!("CREATE STREAM nobrokers (v BIGINT) WITH (connector = 'kafka', topic = '{t}')"),
    )
    .await;
    assert!(
        e.contains("or the session's SET kafka.bootstrap_servers"),
        "{e}"
    );
    s.execute_script(&format!(
        "SET kafka.bootstrap_servers = '{BROKER}';
         CREATE STREAM m (k TEXT, v BIGINT) WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'kafka', topic = '{t}') AS SELECT k, v FROM m;
         INSERT INTO m VALUES ('a', 1), ('b', 2);
         ADVANCE 1 BATCHES;"
    ))
    .await
    .unwrap();
    s.stop_all().await.unwrap();
    let mut r = ran_to_end(&format!(
        "SET trigger = 'available_now';
         SET kafka.bootstrap_servers TO '{BROKER}';
         CREATE STREAM back (k TEXT, v BIGINT) WITH (connector = 'kafka', topic = '{t}',
           starting_offsets = 'earliest');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT k, v FROM back;"
    ))
    .await;
    assert_eq!(
        sql_rows(&mut r, "SELECT * FROM seen ORDER BY k").await,
        strs(&["a|1", "b|2"])
    );
}

#[tokio::test]
async fn the_kafka_sink_writes_rows_as_json_records_keyed_by_a_column() {
    let c = client().await;
    let t = topic("sink");
    create_topic(&c, &t, 1).await;
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM m (k TEXT, v BIGINT) WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = '{t}', key = 'k') AS
           SELECT k, v * 10 AS v FROM m;
         INSERT INTO m VALUES ('a', 1), ('b', 2);
         ADVANCE 1 BATCHES;"
    ))
    .await
    .unwrap();
    s.stop_all().await.unwrap();
    // Read back with the kafka source.
    let mut r = ran_to_end(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM back (k TEXT, v BIGINT, _key TEXT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}',
           topic = '{t}', starting_offsets = 'earliest');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT _key, k, v FROM back;"
    ))
    .await;
    assert_eq!(
        sql_rows(&mut r, "SELECT * FROM seen ORDER BY k").await,
        strs(&["a|a|10", "b|b|20"])
    );
    let err = sql_error(
        &mut s,
        &format!(
            "CREATE SINK nope WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = 'absent-{}') AS SELECT k FROM m",
            std::process::id()
        ),
    )
    .await;
    assert!(
        err.contains("the topic does not exist; create it first"),
        "{err}"
    );
}

/// A regular outer join's changelog as the kafka and files sinks write it: each row
/// with its `_op` (`+I`, `-D`) as a column, in the order emitted, read back as it was
/// sent.
#[tokio::test]
async fn a_changelog_goes_to_kafka_and_files_with_its_op_column() {
    let c = client().await;
    let t = topic("changelog");
    create_topic(&c, &t, 1).await;
    let dir = crate::common::temp_dir("changelog-files");
    let join = "SELECT p.id, p.name, o.amount FROM p LEFT JOIN o ON p.id = o.pid";
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM p (id BIGINT, name TEXT) WITH (connector = 'memory');
         CREATE STREAM o (pid BIGINT, amount BIGINT) WITH (connector = 'memory');
         CREATE SINK k WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = '{t}') AS {join};
         CREATE SINK f WITH (connector = 'files', path = '{}', format = 'parquet') AS {join};
         INSERT INTO p VALUES (1, 'ann');
         ADVANCE 1 BATCHES;
         INSERT INTO o VALUES (1, 10);
         ADVANCE 1 BATCHES;",
        dir.display()
    ))
    .await
    .unwrap();
    s.stop_all().await.unwrap();
    let mut r = ran_to_end(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM back (id BIGINT, name TEXT, amount BIGINT, _op TEXT, _offset BIGINT)
           WITH (connector = 'kafka', bootstrap_servers = '{BROKER}', topic = '{t}',
                 starting_offsets = 'earliest');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT _offset, id, name, amount, _op FROM back;"
    ))
    .await;
    assert_eq!(
        sql_rows(
            &mut r,
            "SELECT id, name, amount, _op FROM seen ORDER BY _offset"
        )
        .await,
        strs(&["1|ann|NULL|+I", "1|ann|NULL|-D", "1|ann|10|+I"])
    );
    // The files: the same rows, with the op column, in the committed files.
    assert_eq!(
        crate::crash::query(
            &dir,
            "SELECT id, name, amount, _op FROM output ORDER BY amount NULLS FIRST, _op"
        )
        .await,
        strs(&["1|ann|NULL|+I", "1|ann|NULL|-D", "1|ann|10|+I"])
    );
}
