//! Session settings: `SET key = 'value'` parsed into a typed [`Setting`], which the
//! command line's flags give directly.

use std::time::Duration;

use flumen_engine::state::StateConfig;
use flumen_engine::{Error, RestartPolicy, Result, Trigger, plan_err};

use crate::planner::OutputMode;
use crate::statement::parse_setting_duration;

/// The session's settings, as the queries it starts see them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_interval: Duration,
    pub output_mode: OutputMode,
    pub checkpoint_location: Option<String>,
    /// Snapshot state every this many batches.
    pub checkpoint_interval: u64,
    /// Append each batch's progress record (JSON lines) to this file.
    pub progress_log: Option<String>,
    pub trigger: Trigger,
    /// `SET restart = 'on-failure'`: a failed query starts again from its checkpoint
    /// (`restart_attempts` times at most, after `restart_delay`, doubling).
    pub restart: bool,
    pub restart_attempts: u32,
    pub restart_delay: Duration,
    /// How console sinks print when they do not say (`SET console_format`).
    pub console_format: Option<ConsoleFormat>,
    /// `state_partitions`, `state_memory`, `state_ttl`.
    pub state: StateConfig,
    /// `SET cluster = 'df://host:port'`: the Ballista cluster queries run their
    /// batches on (`None`: in this process).
    pub cluster: Option<String>,
    /// `SET kafka.bootstrap_servers = 'host:port'`: the brokers of a `kafka` stream or
    /// sink created without its own `bootstrap_servers` (ksqlDB's and Flink's session
    /// default).
    pub kafka_bootstrap_servers: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_interval: Duration::from_secs(1),
            output_mode: OutputMode::default(),
            checkpoint_location: None,
            checkpoint_interval: 1,
            progress_log: None,
            trigger: Trigger::ProcessingTime,
            restart: false,
            restart_attempts: 3,
            restart_delay: Duration::from_secs(1),
            console_format: None,
            state: StateConfig::default(),
            cluster: None,
            kafka_bootstrap_servers: None,
        }
    }
}

/// How a console sink prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// A table per batch, with a header naming the batch.
    Print,
    /// Data rows only, comma-separated.
    Csv,
    /// Data rows only, one JSON object a line.
    Json,
}

impl ConsoleFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleFormat::Print => "print",
            ConsoleFormat::Csv => "csv",
            ConsoleFormat::Json => "json",
        }
    }
}

/// One setting with its value.
#[derive(Debug, Clone)]
pub enum Setting {
    BatchInterval(Duration),
    OutputMode(OutputMode),
    CheckpointLocation(String),
    CheckpointInterval(u64),
    ProgressLog(String),
    Trigger(Trigger),
    /// `restart = 'on-failure'` (true) or `'never'`.
    Restart(bool),
    RestartAttempts(u32),
    RestartDelay(Duration),
    ConsoleFormat(ConsoleFormat),
    /// Hash partitions of keyed state.
    StatePartitions(usize),
    /// The state's memory budget, in bytes.
    StateMemory(usize),
    /// Idle keys' time-to-live; `None` keeps them.
    StateTtl(Option<Duration>),
    /// The cluster's scheduler (`df://host:port`); `None` runs batches here.
    Cluster(Option<String>),
    /// The brokers a `kafka` stream or sink takes when it names none.
    KafkaBootstrapServers(Option<String>),
}

/// The names of Flumen's own settings (what [`Setting::parse`] knows).
pub const NAMES: [&str; 15] = [
    "batch_interval",
    "output_mode",
    "checkpoint_location",
    "progress_log",
    "checkpoint_interval",
    "restart",
    "restart_attempts",
    "restart_delay",
    "console_format",
    "trigger",
    "state_partitions",
    "state_memory",
    "state_ttl",
    "cluster",
    "kafka.bootstrap_servers",
];

/// The error for `SET key`, a key neither Flumen nor DataFusion (whose keys are
/// `datafusion_keys`) has: the nearest name when one is close (a DataFusion key
/// compared by its last part, `batch_size` for `datafusion.execution.batch_size`).
pub fn unknown_setting<'a>(key: &str, datafusion_keys: impl Iterator<Item = &'a str>) -> Error {
    let lower = key.to_ascii_lowercase();
    let near = |name: &'a str, compared: &str| {
        let d = strsim::levenshtein(&lower, compared);
        (d <= 2.max(compared.len() / 5)).then_some((d, name))
    };
    let nearest = NAMES
        .iter()
        .filter_map(|name| near(name, name))
        .chain(datafusion_keys.filter_map(|k| near(k, k.rsplit('.').next().unwrap_or(k))))
        .min();
    let hint = match nearest {
        Some((_, name)) => format!(" (did you mean '{name}'?)"),
        None => String::new(),
    };
    Error::Plan(format!(
        "unknown setting '{key}'{hint}. Flumen's settings are {}; DataFusion's are named datafusion.<section>.<name> (SHOW ALL lists them)",
        NAMES.join(", ")
    ))
}

impl Setting {
    /// `SET key = value` as a setting; `None` when `key` is not one of Flumen's (the
    /// statement then goes to DataFusion, e.g. `datafusion.execution.batch_size`).
    pub fn parse(key: &str, value: &str) -> Result<Option<Setting>> {
        Ok(Some(match key {
            "batch_interval" => Setting::BatchInterval(parse_setting_duration(key, value)?),
            "output_mode" => Setting::OutputMode(OutputMode::parse(value)?),
            "checkpoint_location" => Setting::CheckpointLocation(value.to_string()),
            "progress_log" => Setting::ProgressLog(value.to_string()),
            "checkpoint_interval" => match value.trim().parse::<u64>() {
                Ok(n) => Setting::CheckpointInterval(n),
                Err(_) => return checkpoint_interval_err(value),
            },
            "restart" => Setting::Restart(match value.to_ascii_lowercase().as_str() {
                "on-failure" | "on_failure" => true,
                "never" | "no" => false,
                other => {
                    return plan_err!("unknown restart '{other}'; accepted: on-failure, never");
                }
            }),
            "restart_attempts" => match value.trim().parse::<u32>() {
                Ok(n) => Setting::RestartAttempts(n),
                Err(_) => return restart_attempts_err(value),
            },
            "restart_delay" => Setting::RestartDelay(parse_setting_duration(key, value)?),
            "console_format" => Setting::ConsoleFormat(match value.to_ascii_lowercase().as_str() {
                "print" => ConsoleFormat::Print,
                "csv" => ConsoleFormat::Csv,
                "json" => ConsoleFormat::Json,
                _ => {
                    return plan_err!(
                        "unknown console_format '{value}'; accepted: print, csv, json"
                    );
                }
            }),
            "trigger" => Setting::Trigger(match value.to_ascii_lowercase().as_str() {
                "available_now" | "availablenow" => Trigger::AvailableNow,
                "processing_time" | "processingtime" => Trigger::ProcessingTime,
                other => {
                    return plan_err!(
                        "unknown trigger '{other}'; accepted: available_now, processing_time"
                    );
                }
            }),
            "state_partitions" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => Setting::StatePartitions(n),
                _ => {
                    return plan_err!(
                        "state_partitions '{value}': give a number of partitions from 1 to 4096"
                    );
                }
            },
            "state_memory" => Setting::StateMemory(parse_bytes(key, value)?),
            "state_ttl" => Setting::StateTtl(match value.trim().to_ascii_lowercase().as_str() {
                "none" | "off" | "0" => None,
                _ => Some(parse_setting_duration(key, value)?),
            }),
            "cluster" => Setting::Cluster(match value.trim().to_ascii_lowercase().as_str() {
                "" | "none" | "local" => None,
                _ => {
                    flumen_engine::cluster::ClusterUrl::parse(value)?;
                    Some(value.trim().to_string())
                }
            }),
            "kafka.bootstrap_servers" => Setting::KafkaBootstrapServers(
                Some(value.trim().to_string()).filter(|v| !v.is_empty() && v != "none"),
            ),
            _ => return Ok(None),
        }))
    }
}

/// `512 MB`, `1 GB`, `2GiB`, `65536` (bytes): a size in bytes (units of 1024).
fn parse_bytes(key: &str, value: &str) -> Result<usize> {
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(n) if scale.is_finite() && n * scale >= 1.0 => Ok((n * scale) as usize),
        _ => plan_err!(
            "{key} '{value}': give a size such as '512 MB' or '2 GB' (units: B, KB, MB, GB, TB)"
        ),
    }
}

fn checkpoint_interval_err<T>(value: impl std::fmt::Display) -> Result<T> {
    plan_err!(
        "checkpoint_interval '{value}': give a number of batches from 1 to 100 (state is snapshotted every that many batches)"
    )
}

fn restart_attempts_err<T>(value: impl std::fmt::Display) -> Result<T> {
    plan_err!("restart_attempts '{value}': give the number of restarts allowed, from 1 to 1000")
}

impl Settings {
    /// The restart policy queries start with, if `restart = 'on-failure'`.
    pub fn restart_policy(&self) -> Option<RestartPolicy> {
        self.restart.then_some(RestartPolicy {
            max_restarts: self.restart_attempts,
            delay: self.restart_delay,
        })
    }

    /// Applies `setting`, or says why its value is out of range.
    pub fn apply(&mut self, setting: Setting) -> Result<()> {
        match setting {
            Setting::BatchInterval(d) => self.batch_interval = d,
            Setting::OutputMode(m) => self.output_mode = m,
            Setting::CheckpointLocation(l) => self.checkpoint_location = Some(l),
            Setting::ProgressLog(p) => self.progress_log = Some(p),
            Setting::CheckpointInterval(n) => {
                if !(1..=100).contains(&n) {
                    return checkpoint_interval_err(n);
                }
                self.checkpoint_interval = n;
            }
            Setting::Restart(on) => self.restart = on,
            Setting::RestartAttempts(n) => {
                if !(1..=1000).contains(&n) {
                    return restart_attempts_err(n);
                }
                self.restart_attempts = n;
            }
            Setting::RestartDelay(d) => self.restart_delay = d,
            Setting::ConsoleFormat(f) => self.console_format = Some(f),
            Setting::Trigger(t) => self.trigger = t,
            Setting::StatePartitions(n) => self.state.partitions = n,
            Setting::StateMemory(n) => self.state.memory = n,
            Setting::StateTtl(t) => self.state.ttl = t,
            Setting::Cluster(url) => self.cluster = url,
            Setting::KafkaBootstrapServers(servers) => self.kafka_bootstrap_servers = servers,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &mut Settings, key: &str, value: &str) -> Result<()> {
        let setting = Setting::parse(key, value)?.expect("a Flumen setting");
        s.apply(setting)
    }

    #[test]
    fn state_settings_parse_sizes_partitions_and_ttl() {
        let mut s = Settings::default();
        set(&mut s, "state_memory", "512 MB").unwrap();
        set(&mut s, "state_partitions", "7").unwrap();
        set(&mut s, "state_ttl", "1 day").unwrap();
        assert_eq!(s.state.memory, 512 << 20);
        assert_eq!(s.state.partitions, 7);
        assert_eq!(s.state.ttl, Some(Duration::from_secs(86_400)));
        set(&mut s, "state_memory", "1.5gb").unwrap();
        assert_eq!(s.state.memory, 3 << 29);
        set(&mut s, "state_ttl", "none").unwrap();
        assert_eq!(s.state.ttl, None);
        assert_eq!(
            set(&mut s, "state_memory", "lots").unwrap_err().to_string(),
            "state_memory 'lots': give a size such as '512 MB' or '2 GB' (units: B, KB, MB, GB, TB)"
        );
        assert_eq!(
            set(&mut s, "state_partitions", "0")
                .unwrap_err()
                .to_string(),
            "state_partitions '0': give a number of partitions from 1 to 4096"
        );
    }

    #[test]
    fn text_and_typed_settings_meet_in_one_place() {
        let mut s = Settings::default();
        set(&mut s, "restart", "on-failure").unwrap();
        set(&mut s, "restart_attempts", "7").unwrap();
        s.apply(Setting::RestartDelay(Duration::from_millis(250)))
            .unwrap();
        let p = s.restart_policy().unwrap();
        assert_eq!((p.max_restarts, p.delay), (7, Duration::from_millis(250)));
        set(&mut s, "checkpoint_location", "ckpt/o'neil").unwrap();
        assert_eq!(s.checkpoint_location.as_deref(), Some("ckpt/o'neil"));
        set(&mut s, "console_format", "JSON").unwrap();
        assert_eq!(s.console_format, Some(ConsoleFormat::Json));
    }

    #[test]
    fn out_of_range_values_are_refused_both_ways() {
        let mut s = Settings::default();
        assert_eq!(
            set(&mut s, "checkpoint_interval", "0")
                .unwrap_err()
                .to_string(),
            "checkpoint_interval '0': give a number of batches from 1 to 100 (state is snapshotted every that many batches)"
        );
        assert_eq!(
            s.apply(Setting::RestartAttempts(5000))
                .unwrap_err()
                .to_string(),
            "restart_attempts '5000': give the number of restarts allowed, from 1 to 1000"
        );
        assert_eq!(s.checkpoint_interval, 1);
        assert!(
            Setting::parse("datafusion.execution.batch_size", "10")
                .unwrap()
                .is_none()
        );
    }

    /// Every name in `NAMES` is one `Setting::parse` knows (a value it refuses is an
    /// error, never "not mine"), and an unknown key is not.
    #[test]
    fn the_names_listed_are_the_settings_parsed() {
        for name in NAMES {
            assert!(
                !matches!(Setting::parse(name, "x"), Ok(None)),
                "{name} is listed but not parsed"
            );
        }
        assert!(matches!(Setting::parse("state_partiton", "4"), Ok(None)));
    }
}
