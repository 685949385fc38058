//! TLS and SASL against the real servers scripts/services.sh starts: PostgreSQL and
//! MariaDB with a certificate of the test CA (valid for 127.0.0.1, not for
//! `localhost`), a Tansu broker behind socat's TLS listener on 127.0.0.1:9093, and a
//! Tansu broker that admits only SASL (SCRAM) users on 127.0.0.1:9095.

use std::time::Duration;

use crate::common::{sql_rows, sql_session};

/// The test CA's certificate (PEM).
fn ca() -> String {
    let dir =
        std::env::var("FLUMEN_SERVICES_DIR").unwrap_or_else(|_| "/tmp/flumen-services".into());
    let ca = format!("{dir}/tls/ca.pem");
    assert!(
        std::path::Path::new(&ca).exists(),
        "no test CA at {ca}: run scripts/services.sh start"
    );
    ca
}

/// Writes the row `n` to `table` through a `connector` sink at `url`: Ok with the
/// session still open (its connections too), or the error.
async fn write_row(
    connector: &str,
    url: &str,
    table: &str,
    n: i64,
) -> Result<flumen::sql::FlumenSession, String> {
    let mut s = sql_session();
    let run = async {
        s.execute_script(&format!(
            "CREATE STREAM m (n BIGINT) WITH (connector = 'memory');
             CREATE SINK o WITH (connector = '{connector}', url = '{url}', table = '{table}') AS
               SELECT n FROM m;
             INSERT INTO m VALUES ({n});"
        ))
        .await?;
        s.execute("ADVANCE 1 BATCHES").await.map(|_| ())
    };
    match run.await {
        Ok(()) => Ok(s),
        Err(e) => {
            let _ = s.stop_all().await;
            Err(e.to_string())
        }
    }
}

/// How many of the server's connections named `app` use TLS, and how many there are.
async fn pg_tls_connections(app: &str) -> String {
    crate::crash::pg_rows(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
           JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"
    ))
    .await
    .join("")
}

/// libpq's `sslmode` and `sslrootcert` in a `postgres` sink's URL: `verify-full`
/// checks the chain and the host name, `verify-ca` the chain only, `require` encrypts
/// without checks, `disable` does not encrypt; a wrong CA or host is an error naming
/// the certificate problem.
#[tokio::test]
async fn postgres_sinks_speak_tls_as_libpq_does() {
    let ca = ca();
    let pid = std::process::id();
    let table = format!("tls_pg_{pid}");
    let url = |host: &str, app: &str, params: &str| {
        format!("postgres://flumen@{host}:5432/flumen?application_name={app}&{params}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "verify_full",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "127.0.0.1",
        ),
        ("require", "sslmode=require".into(), "127.0.0.1"),
        (
            "verify_ca_by_name",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            "localhost",
        ),
        ("disable", "sslmode=disable".into(), "127.0.0.1"),
    ];
    for (i, (name, params, host)) in cases.into_iter().enumerate() {
        let app = format!("flumen_{name}_{pid}");
        let s = write_row("postgres", &url(host, &app, &params), &table, i as i64)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = if name == "disable" { "0|1" } else { "1|1" };
        assert_eq!(pg_tls_connections(&app).await, expected, "{name}");
        s.stop_all().await.unwrap();
    }
    assert_eq!(
        crate::crash::pg_rows(&format!("SELECT count(*) FROM {table}")).await,
        vec!["4"]
    );
    // Refused: a name the certificate is not for, a CA that did not sign it (the
    // system's roots), a CA file that is not there, a mode that does not exist.
    let refused = [
        (
            url(
                "localhost",
                "x",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "invalid peer certificate",
        ),
        (
            url("127.0.0.1", "x", "sslmode=verify-full"),
            "invalid peer certificate",
        ),
        (
            url(
                "127.0.0.1",
                "x",
                "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            ),
            "CA file /nonexistent/ca.pem",
        ),
        (
            url("127.0.0.1", "x", "sslmode=sometimes"),
            "sslmode 'sometimes': accepted: disable, allow, prefer, require, verify-ca, verify-full",
        ),
    ];
    for (url, expected) in refused {
        let err = write_row("postgres", &url, &table, 99).await.err();
        assert!(
            err.as_deref().is_some_and(|e| e.contains(expected)),
            "{url}: {err:?}"
        );
    }
}

/// The error a query over a Kafka stream with `options` ends in (2 s timeout), if any.
async fn kafka_stream_error(options: &str) -> Option<String> {
    let mut s = sql_session();
    async {
        s.execute(&format!(
            "CREATE STREAM k (v TEXT) WITH (connector = 'kafka', timeout = '2 seconds', {options})"
        ))
        .await?;
        s.execute("CREATE SINK x WITH (connector = 'memory') AS SELECT v FROM k")
            .await?;
        s.execute("ADVANCE 1 BATCHES").await
    }
    .await
    .err()
    .map(|e| e.to_string())
}

async fn mysql_count(table: &str) -> String {
    use flumen::connectors::mysql_async::prelude::Queryable;
    let mut c = flumen::connectors::mysql_async::Conn::from_url(crate::connectors::kafka::MYSQL)
        .await
        .expect("no MariaDB on 127.0.0.1:3306: run scripts/services.sh start");
    let n: Option<i64> = c
        .query_first(format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap();
    n.unwrap().to_string()
}

/// MySQL's `ssl_mode` and `ssl_ca` in a `mysql` sink's URL, against a user the server
/// admits only over TLS (`REQUIRE SSL`): `VERIFY_IDENTITY` (also what `ssl_ca` alone
/// means) checks the chain and the name, `REQUIRED` encrypts without checks.
#[tokio::test]
async fn mysql_sinks_speak_tls() {
    let ca = ca();
    let table = format!("tls_my_{}", std::process::id());
    let url =
        |host: &str, params: &str| format!("mysql://flumen_tls:flumen@{host}:3306/flumen{params}");
    let err = write_row("mysql", &url("127.0.0.1", ""), &table, 0)
        .await
        .err();
    assert!(
        err.as_deref().is_some_and(|e| e.contains("Access denied")),
        "without TLS: {err:?}"
    );
    for (i, (host, params)) in [
        (
            "127.0.0.1",
            format!("?ssl_mode=VERIFY_IDENTITY&ssl_ca={ca}"),
        ),
        ("127.0.0.1", format!("?ssl_ca={ca}")),
        ("127.0.0.1", "?ssl_mode=REQUIRED".to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let s = write_row("mysql", &url(host, &params), &table, i as i64)
            .await
            .unwrap_or_else(|e| panic!("{host}{params}: {e}"));
        s.stop_all().await.unwrap();
    }
    assert_eq!(mysql_count(&table).await, "3");
    for (host, params, expected) in [
        (
            "localhost",
            format!("?ssl_mode=VERIFY_IDENTITY&ssl_ca={ca}"),
            "localhost",
        ),
        (
            "127.0.0.1",
            "?ssl_mode=VERIFY_IDENTITY&ssl_ca=/nonexistent/ca.pem".to_string(),
            "CA file /nonexistent/ca.pem",
        ),
        (
            "127.0.0.1",
            format!("?ssl_mode=VERIFY_CA&ssl_ca={ca}"),
            "ssl_mode VERIFY_CA is not available for MySQL connections",
        ),
    ] {
        let err = write_row("mysql", &url(host, &params), &table, 99)
            .await
            .err();
        assert!(
            err.as_deref().is_some_and(|e| e.contains(expected)),
            "{host}{params}: {err:?}"
        );
    }
}

/// `security_protocol = 'ssl'` with `ssl_ca_location`: the Kafka sink writes and the
/// Kafka source reads through a TLS listener; plaintext against it, or TLS with the
/// system's roots, is an error naming the broker.
#[tokio::test]
async fn kafka_sinks_and_sources_speak_tls() {
    use flumen::connectors::rskafka::client::ClientBuilder;
    let ca = ca();
    let broker = "127.0.0.1:9093";
    let tls = flumen::connectors::tls::client_config(
        flumen::connectors::tls::TlsMode::VerifyFull,
        Some(&ca),
    )
    .unwrap();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        ClientBuilder::new(vec![broker.to_string()])
            .tls_config(tls)
            .build(),
    )
    .await
    .expect("no TLS Kafka listener on 127.0.0.1:9093: run scripts/services.sh start")
    .unwrap();
    let topic = crate::connectors::kafka::topic("tls");
    crate::connectors::kafka::create_topic(&client, &topic, 1).await;
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM m (k BIGINT, v TEXT) WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{broker}',
           topic = '{topic}', security_protocol = 'ssl', ssl_ca_location = '{ca}') AS
           SELECT k, v FROM m;
         CREATE STREAM back (k BIGINT, v TEXT) WITH (connector = 'kafka',
           bootstrap_servers = '{broker}', topic = '{topic}', starting_offsets = 'earliest',
           security_protocol = 'SSL', ssl_ca_location = '{ca}');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT k, v FROM back;
         INSERT INTO m VALUES (1, 'one'), (2, 'two');"
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT k, v FROM seen ORDER BY k").await,
        vec!["1|one", "2|two"]
    );
    s.stop_all().await.unwrap();

    for (options, expected) in [
        ("", "cannot connect (broker 127.0.0.1:9093)"),
        (
            ", security_protocol = 'ssl'",
            "cannot connect (broker 127.0.0.1:9093)",
        ),
        (
            ", security_protocol = 'tls'",
            "stream k: security_protocol 'tls': accepted: plaintext, ssl, sasl_plaintext, sasl_ssl",
        ),
        (
            &format!(", ssl_ca_location = '{ca}'") as &str,
            "stream k: ssl_ca_location is given but security_protocol is plaintext",
        ),
    ] {
        let err = kafka_stream_error(&format!(
            "bootstrap_servers = '{broker}', topic = '{topic}', format = 'raw'{options}"
        ))
        .await;
        assert!(
            err.as_deref().is_some_and(|e| e.contains(expected)),
            "{options}: {err:?}"
        );
    }
}

/// `security_protocol = 'sasl_plaintext'` with SCRAM-SHA-256 and SCRAM-SHA-512 users:
/// the sink writes and the source reads back; a wrong password, a mechanism the broker
/// does not speak (PLAIN), no SASL, or a SASL option without a SASL protocol are errors
/// naming the broker or the option.
#[tokio::test]
async fn kafka_over_sasl_scram() {
    use flumen::connectors::rskafka::client::{ClientBuilder, Credentials, SaslConfig};
    let broker = "127.0.0.1:9095";
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        ClientBuilder::new(vec![broker.to_string()])
            .sasl_config(SaslConfig::ScramSha512(Credentials::new(
                "bob".into(),
                "s3cret".into(),
            )))
            .build(),
    )
    .await
    .expect("no SASL Kafka broker on 127.0.0.1:9095: run scripts/services.sh start")
    .unwrap();
    let topic = crate::connectors::kafka::topic("sasl");
    crate::connectors::kafka::create_topic(&client, &topic, 1).await;
    let sasl = |user: &str, mechanism: &str, password: &str| {
        format!(
            "security_protocol = 'sasl_plaintext', sasl_mechanism = '{mechanism}',
             sasl_username = '{user}', sasl_password = '{password}'"
        )
    };
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM m (k BIGINT) WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{broker}',
           topic = '{topic}', {}) AS SELECT k FROM m;
         CREATE STREAM back (k BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{broker}',
           topic = '{topic}', starting_offsets = 'earliest', {});
         CREATE SINK seen WITH (connector = 'memory') AS SELECT k FROM back;
         INSERT INTO m VALUES (7), (8);",
        sasl("alice", "SCRAM-SHA-256", "s3cret"),
        sasl("bob", "scram-sha-512", "s3cret")
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT k FROM seen ORDER BY k").await,
        vec!["7", "8"]
    );
    s.stop_all().await.unwrap();

    for (options, expected) in [
        (
            sasl("alice", "SCRAM-SHA-256", "wrong"),
            "cannot connect (broker 127.0.0.1:9095)",
        ),
        // Tansu speaks SCRAM only: PLAIN is refused by the broker, and said so.
        (
            sasl("alice", "PLAIN", "s3cret"),
            "cannot connect (broker 127.0.0.1:9095)",
        ),
        (
            "format = 'raw'".to_string(),
            "cannot connect (broker 127.0.0.1:9095)",
        ),
        (
            "sasl_username = 'alice', sasl_password = 's3cret'".to_string(),
            "stream k: sasl_username, sasl_password given but security_protocol is plaintext",
        ),
        (
            "security_protocol = 'sasl_plaintext'".to_string(),
            "stream k: security_protocol 'sasl_plaintext' needs sasl_username and sasl_password",
        ),
        (
            sasl("alice", "GSSAPI", "s3cret"),
            "stream k: sasl_mechanism 'GSSAPI': accepted: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
    ] {
        let err = kafka_stream_error(&format!(
            "bootstrap_servers = '{broker}', topic = '{topic}', {options}"
        ))
        .await;
        assert!(
            err.as_deref().is_some_and(|e| e.contains(expected)),
            "{options}: {err:?}"
        );
    }
}
