//! The `sxds` binary's command line: every option documented, Go sxds
//! variables honoured, bad configuration refused in one line.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn sxds() -> Command {
    support::sxds_binary()
}

#[test]
fn help_documents_every_option_with_its_variable() {
    let output = sxds().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, variable) in [
        ("--listen-address", "SXDS_LISTEN_ADDRESS"),
        ("--xds-port", "SXDS_XDS_PORT"),
        ("--cacher-port", "SXDS_CACHER_PORT"),
        ("--ads-mode", "SXDS_ADS_MODE"),
        ("--production", "SXDS_PRODUCTION"),
        ("--data-dir", "SXDS_DATA_DIR"),
        ("--body-limit", "SXDS_BODY_LIMIT"),
        ("--shutdown-grace", "SXDS_SHUTDOWN_GRACE"),
        ("--log", "SXDS_LOG"),
        ("--rest-max-connections", "SXDS_REST_MAX_CONNECTIONS"),
        ("--rest-header-timeout", "SXDS_REST_HEADER_TIMEOUT"),
        ("--rest-body-timeout", "SXDS_REST_BODY_TIMEOUT"),
        ("--rest-idle-timeout", "SXDS_REST_IDLE_TIMEOUT"),
        ("--xds-keepalive-interval", "SXDS_XDS_KEEPALIVE_INTERVAL"),
        ("--xds-keepalive-timeout", "SXDS_XDS_KEEPALIVE_TIMEOUT"),
        ("--send-timeout", "SXDS_SEND_TIMEOUT"),
        ("--rest-xds-hold", "SXDS_REST_XDS_HOLD"),
        ("--token-file", "SXDS_TOKEN_FILE"),
        ("--allow-unauthenticated-writes", "SXDS_ALLOW_UNAUTHENTICATED_WRITES"),
        ("--history", "SXDS_HISTORY"),
        ("--max-stream-age", "SXDS_MAX_STREAM_AGE"),
        ("--tls-cert", "SXDS_TLS_CERT"),
        ("--tls-key", "SXDS_TLS_KEY"),
        ("--xds-client-ca", "SXDS_XDS_CLIENT_CA"),
        ("--store", "SXDS_STORE"),
        ("--etcd-user", "SXDS_ETCD_USER"),
        ("--etcd-password", "SXDS_ETCD_PASSWORD"),
        ("--etcd-ca", "SXDS_ETCD_CA"),
        ("--etcd-cert", "SXDS_ETCD_CERT"),
        ("--etcd-key", "SXDS_ETCD_KEY"),
    ] {
        assert!(help.contains(flag) && help.contains(variable), "{flag} / {variable} missing from --help");
    }
    assert!(help.contains("[default: 8081]") && help.contains("[default: 8082]") && help.contains("[default: 32MiB]"));
}

#[test]
fn bad_configuration_is_one_line_and_a_non_zero_exit() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (&["--xds-port", "http"], &[]),
        (&[], &[("SXDS_CACHER_PORT", "99999")]),
        (&[], &[("SXDS_PRODUCTION", "maybe")]),
        (&["--body-limit", "lots"], &[]),
    ];
    for (args, env) in cases {
        let output = sxds().args(args).envs(env.iter().copied()).output().unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} accepted");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
        assert!(stderr.starts_with("sxds: "), "{stderr:?}");
    }
}

#[test]
fn incomplete_or_unreadable_tls_settings_stop_the_start_in_one_line() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", missing], "--tls-key is missing"),
        (&["--tls-key", missing], "--tls-cert is missing"),
        (&["--xds-client-ca", missing], "--xds-client-ca (SXDS_XDS_CLIENT_CA) needs --tls-cert"),
        (&["--tls-cert", missing, "--tls-key", missing], "missing.pem"),
    ];
    for (args, expected) in cases {
        let output = sxds()
            .args(["--listen-address", "127.0.0.1", "--xds-port", "0", "--cacher-port", "0", "--data-dir"])
            .arg(data.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
        assert!(stderr.starts_with("sxds: ") && stderr.contains(expected), "{args:?}: {stderr:?}");
    }
}

/// Runs the daemon on ephemeral ports until it logs that it listens.
fn first_log_line(env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = sxds()
        .args(["--listen-address", "127.0.0.1", "--data-dir"])
        .arg(data.path())
        .envs([("SXDS_XDS_PORT", "0"), ("SXDS_CACHER_PORT", "0")])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listening = None;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains("sxds listening") => {
                listening = Some(line);
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    listening.expect("the daemon logged that it listens")
}

#[test]
fn production_mode_logs_json_lines() {
    let line = first_log_line(&[("SXDS_PRODUCTION", "true")]);
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(parsed["fields"]["message"], "sxds listening");
    assert_eq!(parsed["level"], "INFO");

    let text = first_log_line(&[("SXDS_PRODUCTION", "false"), ("SXDS_ADS_MODE", "true")]);
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err(), "text logs outside production");
}
