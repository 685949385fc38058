//! TLS for the network connectors (PostgreSQL, MySQL, Kafka), on rustls with the ring
//! provider — the same TLS stack the object-store client already uses.
//!
//! ```text
//!  mode      encrypts  checks the chain  checks the host name
//!  disable   no        -                 -
//!  prefer    if the server offers it (PostgreSQL only), no checks
//!  require   yes       no                no     (libpq's `require`)
//!  verify-ca yes       yes               no
//!  verify-full yes     yes               yes
//! ```
//!
//! The chain is checked against a CA file (PEM) when one is given, else the system's
//! roots.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    /// libpq's `sslmode` names (`allow` is `prefer`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(
            match value.to_ascii_lowercase().replace('_', "-").as_str() {
                "disable" | "disabled" => Self::Disable,
                "allow" | "prefer" | "preferred" => Self::Prefer,
                "require" | "required" => Self::Require,
                "verify-ca" => Self::VerifyCa,
                "verify-full" | "verify-identity" => Self::VerifyFull,
                _ => return None,
            },
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots a chain is checked against: the PEM file `ca_file`, else the system's.
fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("CA file {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("CA file {path}: no PEM certificate in it"));
            }
            for c in certs {
                store.add(c).map_err(|e| format!("CA file {path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err("no system root certificates found; give a CA file".to_string());
            }
        }
    }
    Ok(store)
}

/// A client configuration for `mode` (not `Disable`).
pub fn client_config(mode: TlsMode, ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match mode {
        TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck(provider())))
            .with_no_client_auth(),
        TlsMode::VerifyCa => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_file)?), provider())
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        TlsMode::VerifyFull => builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `require`: encrypted, the certificate not checked (libpq's meaning).
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A PostgreSQL URL's TLS parameters: `sslmode` (libpq's names; default `prefer`) and
/// `sslrootcert` (a CA file) are taken out, and what tokio-postgres understands is
/// put back.
pub struct PgTls {
    pub url: String,
    pub mode: TlsMode,
    pub ca_file: Option<String>,
}

/// Splits `url`'s query string into the TLS parameters named by `keys` and the rest.
fn take_params(url: &str, keys: &[&str]) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if keys.contains(&k) {
            taken.push((k.to_string(), percent_decode(v)));
        } else {
            kept.push(part);
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, taken)
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTls {
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (rest, taken) = take_params(url, &["sslmode", "sslrootcert"]);
        let mut mode = TlsMode::Prefer;
        let mut ca_file = None;
        for (k, v) in taken {
            if k == "sslmode" {
                mode = TlsMode::parse(&v).ok_or_else(|| {
                    format!(
                        "sslmode '{v}': accepted: disable, allow, prefer, require, verify-ca, verify-full"
                    )
                })?;
            } else {
                ca_file = Some(v);
            }
        }
        let pg_mode = match mode {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            _ => "require",
        };
        let url = if rest.contains('?') {
            format!("{rest}&sslmode={pg_mode}")
        } else {
            format!("{rest}?sslmode={pg_mode}")
        };
        Ok(Self { url, mode, ca_file })
    }

    /// The connector tokio-postgres negotiates TLS with.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let config = client_config(self.mode, self.ca_file.as_deref())?;
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            Arc::unwrap_or_clone(config),
        ))
    }
}

/// Connects to PostgreSQL at `url` (with its TLS parameters); the connection's task
/// is spawned, its end logged as `what`.
pub async fn pg_connect(url: &str, what: String) -> Result<tokio_postgres::Client, String> {
    let tls = PgTls::from_url(url)?;
    let connector = tls.connector()?;
    let (client, connection) = tokio_postgres::connect(&tls.url, connector)
        .await
        .map_err(|e| pg_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("{what}: connection closed: {e}");
        }
    });
    Ok(client)
}

/// A tokio-postgres error with its cause (the TLS or I/O error under it).
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// MySQL options from `url`: mysql_async's own TLS parameters (`require_ssl`,
/// `verify_ca`, `verify_identity`, `built_in_roots`), plus `ssl_mode` (MySQL's names:
/// `DISABLED`, `PREFERRED` — taken as disabled —, `REQUIRED`, `VERIFY_IDENTITY`;
/// `VERIFY_CA` is refused) and `ssl_ca` (a CA file; with it alone, `VERIFY_IDENTITY`).
pub fn mysql_opts(url: &str) -> Result<mysql_async::Opts, String> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let (rest, taken) = take_params(&url, &["ssl_mode", "ssl_ca"]);
    let opts = mysql_async::Opts::from_url(&rest).map_err(|e| format!("bad URL: {e}"))?;
    let mut mode = None;
    let mut ca_file = None;
    for (k, v) in taken {
        if k == "ssl_mode" {
            mode = Some(TlsMode::parse(&v).ok_or_else(|| {
                format!(
                    "ssl_mode '{v}': accepted: DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
                )
            })?);
        } else {
            ca_file = Some(v);
        }
    }
    if mode.is_none() && ca_file.is_none() {
        return Ok(opts);
    }
    let mode = mode.unwrap_or(TlsMode::VerifyFull);
    let ssl = match mode {
        TlsMode::Disable | TlsMode::Prefer => None,
        // mysql_async 0.37 cannot skip the host name check on rustls 0.23 (it looks
        // for the error's old name): refused rather than checking more than asked.
        TlsMode::VerifyCa => {
            return Err(
                "ssl_mode VERIFY_CA is not available for MySQL connections (the client \
                 cannot skip the host name check); use VERIFY_IDENTITY or REQUIRED"
                    .into(),
            );
        }
        _ => {
            let mut ssl = mysql_async::SslOpts::default()
                .with_danger_accept_invalid_certs(mode == TlsMode::Require)
                .with_danger_skip_domain_validation(mode != TlsMode::VerifyFull);
            if let Some(ca) = &ca_file {
                // Checked here, so that a wrong path is named before connecting.
                roots(Some(ca))?;
                ssl = ssl
                    .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
                    .with_disable_built_in_roots(true);
            }
            Some(ssl)
        }
    };
    // With TLS asked for, the connection stays on TCP (mysql_async would otherwise move
    // a connection to 127.0.0.1 onto the server's Unix socket, without TLS).
    let tcp_only = ssl.is_some();
    let mut builder = mysql_async::OptsBuilder::from_opts(opts).ssl_opts(ssl);
    if tcp_only {
        builder = builder.prefer_socket(false);
    }
    Ok(builder.into())
}

/// Kafka's security options: `security_protocol` (`plaintext`, the default, `ssl`,
/// `sasl_plaintext`, `sasl_ssl`), `ssl_ca_location` (a CA file; else the system's
/// roots; the broker's host name is checked too, Kafka's default
/// `ssl.endpoint.identification.algorithm`), and for SASL `sasl_mechanism` (`PLAIN`,
/// `SCRAM-SHA-256`, `SCRAM-SHA-512`), `sasl_username`, `sasl_password`.
pub const KAFKA_SECURITY_OPTIONS: [&str; 5] = [
    "security_protocol",
    "ssl_ca_location",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
];

/// How a Kafka client connects: TLS and SASL, each if asked for.
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    pub tls: Option<Arc<ClientConfig>>,
    pub sasl: Option<rskafka::client::SaslConfig>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.is_some())
            .finish()
    }
}

impl KafkaSecurity {
    /// `builder` with this security.
    pub fn apply(
        &self,
        mut builder: rskafka::client::ClientBuilder,
    ) -> rskafka::client::ClientBuilder {
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(Arc::clone(tls));
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(sasl.clone());
        }
        builder
    }
}

/// The security the Kafka options of `what` (a stream or sink) ask for.
pub fn kafka_security(
    what: &str,
    options: &flumen_engine::registry::ConnectorOptions,
) -> flumen_engine::Result<KafkaSecurity> {
    use rskafka::client::{Credentials, SaslConfig};
    let err = |m: String| flumen_engine::Error::Plan(format!("{what}: {m}"));
    let protocol = options
        .get("security_protocol")
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_else(|| "plaintext".into());
    let (tls, sasl) = match protocol.as_str() {
        "plaintext" => (false, false),
        "ssl" => (true, false),
        "sasl_plaintext" => (false, true),
        "sasl_ssl" => (true, true),
        other => {
            return Err(err(format!(
                "security_protocol '{other}': accepted: plaintext, ssl, sasl_plaintext, sasl_ssl"
            )));
        }
    };
    let ca = options.get("ssl_ca_location").map(String::as_str);
    if ca.is_some() && !tls {
        return Err(err(format!(
            "ssl_ca_location is given but security_protocol is {protocol}; set security_protocol = 'ssl' or 'sasl_ssl'"
        )));
    }
    let sasl_given: Vec<&str> = ["sasl_mechanism", "sasl_username", "sasl_password"]
        .into_iter()
        .filter(|k| options.contains_key(*k))
        .collect();
    if !sasl && !sasl_given.is_empty() {
        return Err(err(format!(
            "{} given but security_protocol is {protocol}; set security_protocol = 'sasl_plaintext' or 'sasl_ssl'",
            sasl_given.join(", ")
        )));
    }
    let tls = if tls {
        Some(client_config(TlsMode::VerifyFull, ca).map_err(err)?)
    } else {
        None
    };
    let sasl = if sasl {
        let (Some(user), Some(password)) =
            (options.get("sasl_username"), options.get("sasl_password"))
        else {
            return Err(err(format!(
                "security_protocol '{protocol}' needs sasl_username and sasl_password"
            )));
        };
        let credentials = Credentials::new(user.clone(), password.clone());
        let mechanism = options
            .get("sasl_mechanism")
            .map(|m| m.to_ascii_uppercase().replace('_', "-"))
            .unwrap_or_else(|| "PLAIN".into());
        Some(match mechanism.as_str() {
            "PLAIN" => SaslConfig::Plain(credentials),
            "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
            "SCRAM-SHA-512" => SaslConfig::ScramSha512(credentials),
            other => {
                return Err(err(format!(
                    "sasl_mechanism '{other}': accepted: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                )));
            }
        })
    } else {
        None
    };
    Ok(KafkaSecurity { tls, sasl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_urls_keep_their_other_parameters() {
        let t = PgTls::from_url(
            "postgres://u@127.0.0.1/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            t.url,
            "postgres://u@127.0.0.1/db?application_name=x&sslmode=require"
        );
        assert_eq!(t.mode, TlsMode::VerifyFull);
        assert_eq!(t.ca_file.as_deref(), Some("/tmp/ca.pem"));
        let t = PgTls::from_url("postgres://u@127.0.0.1/db").unwrap();
        assert_eq!(t.url, "postgres://u@127.0.0.1/db?sslmode=prefer");
        assert!(PgTls::from_url("postgres://h/db?sslmode=sometimes").is_err());
    }
}
