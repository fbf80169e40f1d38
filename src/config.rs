//! Command-line flags, each also read from an `SXDS_*` variable. The Go
//! sxds variables (`SXDS_XDS_PORT`, `SXDS_CACHER_PORT`, `SXDS_ADS_MODE`,
//! `SXDS_PRODUCTION`) keep their meaning.

use std::{net::IpAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{builder::BoolishValueParser, ArgAction, Parser};

/// A standalone Envoy xDS control plane: PUT a bundle of Envoy v3 resources
/// for a node type, and every Envoy whose node id is `<node_type>-...` gets it.
#[derive(Debug, Clone, Parser)]
#[command(name = "sxds", version)]
pub struct Config {
    /// Address both servers listen on.
    #[arg(long, env = "SXDS_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// Port of the xDS server: gRPC (ADS and the per-type services) and
    /// REST polling (`POST /v3/discovery:*`), HTTP/2.
    #[arg(long, env = "SXDS_XDS_PORT", default_value_t = 8081)]
    pub xds_port: u16,

    /// Port of the REST API ("cacher") that takes bundles.
    #[arg(long, env = "SXDS_CACHER_PORT", default_value_t = 8082)]
    pub cacher_port: u16,

    /// Kept for compatibility with Go sxds; changes nothing. ADS and the
    /// per-type services, state of the world and delta, are always served together.
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

    /// Where bundles are stored. By default the embedded store in
    /// --data-dir; `etcd://host:port[,host:port...]` keeps them in an etcd
    /// cluster that every sxds replica shares (README: Replicas on etcd).
    #[arg(long, env = "SXDS_STORE", value_name = "URL", value_parser = parse_store)]
    pub store: Option<EtcdEndpoints>,

    /// etcd user (etcd's auth); needs --etcd-password.
    #[arg(long, env = "SXDS_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,

    /// Password of --etcd-user.
    #[arg(long, env = "SXDS_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_user")]
    pub etcd_password: Option<String>,

    /// PEM CA certificate of etcd's server certificates: etcd is reached over TLS.
    #[arg(long, env = "SXDS_ETCD_CA", value_name = "PATH")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate for etcd (`--client-cert-auth`); needs --etcd-key.
    #[arg(long, env = "SXDS_ETCD_CERT", value_name = "PATH", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(long, env = "SXDS_ETCD_KEY", value_name = "PATH", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// Largest accepted request body, e.g. `32MiB`, `500KB`, `1048576`.
    #[arg(long, env = "SXDS_BODY_LIMIT", default_value = "32MiB", value_parser = parse_size)]
    pub body_limit: usize,

    /// How long shutdown waits for open streams and requests, e.g. `10s`, `500ms`.
    #[arg(long, env = "SXDS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Most REST connections open at once. At the cap sxds stops accepting and
    /// newcomers wait in the kernel's listen backlog until a connection closes.
    /// A fixed 512: far below the open-file limit sxds raises itself to (the
    /// hard limit, 524288 on systemd hosts), so idle REST clients cannot use
    /// up the descriptors xDS needs. Lower it where that limit is a few thousand.
    #[arg(long, env = "SXDS_REST_MAX_CONNECTIONS", default_value = "512")]
    pub rest_max_connections: NonZeroUsize,

    /// How long a REST client may take to send a request's headers, counted
    /// from its first byte. Slower clients are disconnected.
    #[arg(long, env = "SXDS_REST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub rest_header_timeout: Duration,

    /// How long a REST client may take to send a whole request body, counted
    /// from the end of its headers; slower bodies are answered 408.
    #[arg(long, env = "SXDS_REST_BODY_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub rest_body_timeout: Duration,

    /// A REST connection with no request in progress for this long is closed.
    #[arg(long, env = "SXDS_REST_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub rest_idle_timeout: Duration,

    /// An xDS connection that sent nothing for this long is pinged (HTTP/2 PING).
    #[arg(long, env = "SXDS_XDS_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_timeout)]
    pub xds_keepalive_interval: Duration,

    /// How long an xDS client has to answer a ping before its connection is closed.
    #[arg(long, env = "SXDS_XDS_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_timeout)]
    pub xds_keepalive_timeout: Duration,

    /// How long an xDS client may take to take in one response (it grants
    /// HTTP/2 flow-control window as it reads). A stream whose client takes
    /// longer ends with DEADLINE_EXCEEDED and its connection is closed, which
    /// frees what was buffered for it. Raise it for very large bundles over
    /// slow links: 60s is 10 MB at 170 KB/s.
    #[arg(long, env = "SXDS_SEND_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub send_timeout: Duration,

    /// How long a REST xDS poll (`POST /v3/discovery:*` on the xDS port)
    /// whose `version_info` is current is held open waiting for a change
    /// before it is answered 304. Never longer than the client says it waits:
    /// Envoy announces its `request_timeout` (`x-envoy-expected-rq-timeout-ms`),
    /// and the hold stays a second under it (at least half of it). `0s`
    /// answers at once, as go-control-plane does.
    #[arg(long, env = "SXDS_REST_XDS_HOLD", default_value = "30s", value_parser = parse_duration)]
    pub rest_xds_hold: Duration,

    /// How often each Cloud Map endpoint source is polled
    /// (`DiscoverInstancesRevision`; `DiscoverInstances` only when the
    /// revision moved), jittered down to 80 %. A failing source backs off,
    /// up to 5 minutes.
    #[arg(long, env = "SXDS_CLOUD_MAP_INTERVAL", default_value = "5s", value_parser = parse_timeout)]
    pub cloud_map_interval: Duration,

    /// The longest time a Cloud Map source goes without a full
    /// `DiscoverInstances`, even while its revision stays: Cloud Map does not
    /// move the revision when only an instance's health changes.
    #[arg(long, env = "SXDS_CLOUD_MAP_REFRESH", default_value = "30s", value_parser = parse_timeout)]
    pub cloud_map_refresh: Duration,

    /// The Cloud Map API endpoint, instead of AWS's (or `AWS_ENDPOINT_URL`):
    /// an emulator, a VPC endpoint. Used as given, without the `data-` host
    /// prefix AWS's own endpoints need.
    #[arg(long, env = "SXDS_CLOUD_MAP_ENDPOINT", value_name = "URL")]
    pub cloud_map_endpoint: Option<String>,

    /// An Envoy binary that checks every PUT before it is stored
    /// (`--mode validate` on a static bootstrap rendered from the bundle):
    /// a bundle Envoy refuses gets a 400 with Envoy's message and the
    /// resource it concerns. Off by default.
    #[arg(long, env = "SXDS_ENVOY_VALIDATE", value_name = "PATH")]
    pub envoy_validate: Option<PathBuf>,

    /// How long one `--envoy-validate` check may take; past it the PUT gets
    /// 503 and nothing is stored.
    #[arg(long, env = "SXDS_ENVOY_VALIDATE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub envoy_validate_timeout: Duration,

    /// A file of the bearer tokens that may write (PUT, DELETE, rollback):
    /// one per line, `token` or `name:token` (the name is what the log
    /// says), `#` for comments. Re-read when it changes. Without it, only
    /// loopback clients may write.
    #[arg(long, env = "SXDS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Accept writes from any address without a token, as Go sxds did.
    /// Only where the REST port is reachable by trusted clients alone.
    #[arg(long, env = "SXDS_ALLOW_UNAUTHENTICATED_WRITES", value_parser = BoolishValueParser::new(), action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true", conflicts_with = "token_file")]
    pub allow_unauthenticated_writes: bool,

    /// How many versions of each node type the store keeps for history and rollback.
    #[arg(long, env = "SXDS_HISTORY", default_value = "50", value_name = "N")]
    pub history: NonZeroUsize,

    /// PEM certificate chain: both ports serve TLS (xDS h2, REST h2 and
    /// http/1.1). Needs --tls-key. Read again when the file changes, so a
    /// rotated certificate needs no restart.
    #[arg(long, env = "SXDS_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SXDS_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): xDS clients must present a certificate signed by
    /// one, and a stream is served only a node type its certificate names (a
    /// URI SAN's last path segment or a DNS SAN's first label). Needs --tls-cert.
    #[arg(long, env = "SXDS_XDS_CLIENT_CA", value_name = "PATH")]
    pub xds_client_ca: Option<PathBuf>,

    /// Drain each xDS connection after this long (±10 %, e.g. `30m`): GOAWAY,
    /// and its streams end, so its Envoy reconnects, possibly to another
    /// replica. With several replicas, Envoys then spread back over one that
    /// returns. Envoy keeps its config meanwhile. Off by default.
    #[arg(long, env = "SXDS_MAX_STREAM_AGE", value_parser = parse_timeout)]
    pub max_stream_age: Option<Duration>,

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

/// The etcd members of `--store etcd://host:port[,host:port...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoints(pub Vec<String>);

/// Parses `etcd://host:port[,host:port...]`.
pub fn parse_store(text: &str) -> Result<EtcdEndpoints, String> {
    let usage = "use etcd://host:port[,host:port...] (without --store, bundles are kept in --data-dir)";
    let Some(rest) = text.trim().strip_prefix("etcd://") else { return Err(format!("{text:?}: {usage}")) };
    let endpoints: Vec<String> = rest.trim_end_matches('/').split(',').map(|e| e.trim().to_owned()).collect();
    match endpoints.iter().find(|e| e.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())) {
        Some(bad) => Err(format!("{bad:?} is not host:port: {usage}")),
        None => Ok(EtcdEndpoints(endpoints)),
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

/// Like [`parse_duration`], refusing zero: a zero timeout would cut every client.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| if d.is_zero() { Err(format!("{text:?}: a timeout must be longer than zero")) } else { Ok(d) })
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
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0s").is_err());
    }

    #[test]
    fn connection_limits_default_well_below_the_file_limit_and_refuse_zero() {
        let config = Config::try_parse_from(["sxds"]).unwrap();
        assert_eq!(config.rest_max_connections.get(), 512);
        assert_eq!((config.rest_header_timeout, config.send_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
        assert!(Config::try_parse_from(["sxds", "--rest-max-connections=0"]).is_err());
        assert!(Config::try_parse_from(["sxds", "--send-timeout=0ms"]).is_err());
        assert_eq!(config.rest_xds_hold, Duration::from_secs(30));
        assert!(Config::try_parse_from(["sxds", "--rest-xds-hold=0s"]).unwrap().rest_xds_hold.is_zero(), "0 answers at once");
    }

    #[test]
    fn the_store_is_embedded_unless_an_etcd_url_names_members() {
        assert_eq!(Config::try_parse_from(["sxds"]).unwrap().store, None);
        let config = Config::try_parse_from(["sxds", "--store", "etcd://10.0.0.1:2379,etcd-2:2379"]).unwrap();
        assert_eq!(config.store, Some(EtcdEndpoints(vec!["10.0.0.1:2379".into(), "etcd-2:2379".into()])));
        for bad in ["redb://x", "etcd://", "etcd://host", "etcd://host:port", "etcd://a:1,"] {
            assert!(Config::try_parse_from(["sxds", "--store", bad]).is_err(), "{bad}");
        }
        assert!(Config::try_parse_from(["sxds", "--etcd-user", "u"]).is_err(), "a user needs a password");
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
