//! Command-line flags, each also read from an `SXDS_*` variable. The Go
//! sxds variables (`SXDS_XDS_PORT`, `SXDS_CACHER_PORT`, `SXDS_ADS_MODE`,
//! `SXDS_PRODUCTION`) keep their meaning.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{builder::BoolishValueParser, ArgAction, Parser};

/// A standalone Envoy xDS control plane: PUT a bundle of Envoy v3 resources
/// for a node type, and every Envoy whose node id is `<node_type>-...` gets it.
#[derive(Debug, Clone, Parser)]
#[command(name = "sxds", version)]
pub struct Config {
    /// Address both servers listen on.
    #[arg(long, env = "SXDS_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// Port of the xDS gRPC server (ADS and the per-type services).
    #[arg(long, env = "SXDS_XDS_PORT", default_value_t = 8081)]
    pub xds_port: u16,

    /// Port of the REST API ("cacher") that takes bundles.
    #[arg(long, env = "SXDS_CACHER_PORT", default_value_t = 8082)]
    pub cacher_port: u16,

    /// Kept for compatibility with Go sxds; changes nothing. ADS and the
    /// separate LDS/CDS/RDS/EDS services are always served together.
    #[arg(long, env = "SXDS_ADS_MODE", value_parser = BoolishValueParser::new(), action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub ads_mode: bool,

    /// Production mode: logs as JSON lines instead of text.
    #[arg(long, env = "SXDS_PRODUCTION", value_parser = BoolishValueParser::new(), action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub production: bool,

    /// Directory of the durable bundle store (created if missing).
    #[arg(long, env = "SXDS_DATA_DIR", default_value = "sxds-data")]
    pub data_dir: PathBuf,

    /// Largest accepted request body, e.g. `32MiB`, `500KB`, `1048576`.
    #[arg(long, env = "SXDS_BODY_LIMIT", default_value = "32MiB", value_parser = parse_size)]
    pub body_limit: usize,

    /// How long shutdown waits for open streams and requests, e.g. `10s`, `500ms`.
    #[arg(long, env = "SXDS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `sxds=debug`.
    #[arg(long, env = "SXDS_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// Defaults for tests and embedding: loopback, ephemeral ports.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut config = Self::parse_from(["sxds"]);
        config.listen_address = IpAddr::from([127, 0, 0, 1]);
        config.xds_port = 0;
        config.cacher_port = 0;
        config.data_dir = data_dir;
        config.shutdown_grace = Duration::from_secs(5);
        config
    }
}

/// Parses `32MiB`, `10MB`, `512KiB`, `1024` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|_| format!("{text:?} is not a size like 32MiB"))?;
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)")),
    };
    number.checked_mul(multiplier).filter(|n| *n > 0).ok_or_else(|| format!("{text:?} is out of range"))
}

/// Parses `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 10s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        other => Err(format!("unknown duration unit {other:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_match_go_sxds() {
        let config = Config::try_parse_from(["sxds"]).unwrap();
        assert_eq!((config.xds_port, config.cacher_port), (8081, 8082));
        assert_eq!(config.body_limit, 32 << 20);
        assert!(!config.ads_mode && !config.production);
    }

    #[test]
    fn boolean_flags_take_go_style_values_and_refuse_others() {
        let config = Config::try_parse_from(["sxds", "--production=true", "--ads-mode"]).unwrap();
        assert!(config.production && config.ads_mode);
        let config = Config::try_parse_from(["sxds", "--production=false"]).unwrap();
        assert!(!config.production);
        assert!(Config::try_parse_from(["sxds", "--production=maybe"]).is_err());
        assert!(Config::try_parse_from(["sxds", "--xds-port=http"]).is_err());
    }
}
