use std::io::Write;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Root {
    #[serde(default)]
    service: ServiceConfig,
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    cassandra: CassandraConfig,
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_then_file_then_env() {
    let f = file(
        r#"
        [kafka]
        bootstrap_servers = "file:9092"
        linger_ms = 20
        [cassandra]
        keyspace = "from_file"
        "#,
    );
    let root: Root = load_from(
        Some(f.path()),
        env(&[
            ("TICKFLOW_KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
            ("TICKFLOW_CASSANDRA__CONTACT_POINTS", "a:9042, b:9042"),
            ("TICKFLOW_STACK_HOME", "/not/a/config/key"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    // env beats file
    assert_eq!(root.kafka.bootstrap_servers, "env:9092");
    // file beats default
    assert_eq!(root.kafka.linger_ms, 20);
    assert_eq!(root.cassandra.keyspace, "from_file");
    // default where neither says anything
    assert_eq!(root.kafka.client_id, "tickflow");
    assert_eq!(root.service.shutdown_timeout_ms, 10_000);
    // a comma-separated env var becomes a list
    assert_eq!(root.cassandra.contact_points, vec!["a:9042", "b:9042"]);
}

#[test]
fn no_file_gives_defaults() {
    let root: Root = load_from(None, env(&[])).unwrap();
    assert_eq!(root.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(root.cassandra.contact_points, vec!["127.0.0.1:9042"]);
}

#[test]
fn unknown_key_in_file_is_named_with_the_file() {
    let f = file("[kafka]\nbootstrap_serverz = \"x:1\"\n");
    let err = load_from::<Root>(Some(f.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`kafka.bootstrap_serverz`"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn unknown_section_is_named() {
    let f = file("[kafak]\nx = 1\n");
    let err = load_from::<Root>(Some(f.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`kafak`"), "{err}");
}

#[test]
fn unknown_key_from_env_names_the_variable() {
    let err = load_from::<Root>(None, env(&[("TICKFLOW_KAFKA__NOPE", "1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`kafka.nope`"), "{err}");
    assert!(err.contains("TICKFLOW_KAFKA__NOPE"), "{err}");
}

#[test]
fn ill_typed_key_is_named() {
    let f = file("[kafka]\nlinger_ms = \"soon\"\n");
    let err = load_from::<Root>(Some(f.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("kafka.linger_ms"), "{err}");

    let err = load_from::<Root>(
        None,
        env(&[("TICKFLOW_SERVICE__HTTP_LISTEN", "not-an-addr")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("service.http_listen"), "{err}");
    assert!(err.contains("TICKFLOW_SERVICE__HTTP_LISTEN"), "{err}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = load_from::<Root>(Some(Path::new("/no/such/tickflow.toml")), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/tickflow.toml"), "{err}");
}

#[test]
fn secrets_are_read_but_never_printed() {
    let root: Root = load_from(
        None,
        env(&[
            ("TICKFLOW_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("TICKFLOW_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("TICKFLOW_KAFKA__SASL_USERNAME", "svc"),
            ("TICKFLOW_KAFKA__SASL_PASSWORD", "hunter2-secret"),
        ]),
    )
    .unwrap();
    assert_eq!(
        root.kafka.sasl_password.as_ref().unwrap().expose_secret(),
        "hunter2-secret"
    );
    let printed = format!("{root:?}");
    assert!(!printed.contains("hunter2-secret"), "{printed}");
}

#[test]
fn validation_names_every_bad_key() {
    let f = file(
        r#"
        [kafka]
        bootstrap_servers = "no-port"
        security_protocol = "sasl_ssl"
        [cassandra]
        keyspace = "1bad-name"
        [service]
        shutdown_timeout_ms = 0
        "#,
    );
    let root: Root = load_from(Some(f.path()), env(&[])).unwrap();
    let mut problems = Problems::new();
    root.kafka.validate(&mut problems);
    root.cassandra.validate(&mut problems);
    root.service.validate(&mut problems);
    let err = problems.into_result().unwrap_err().to_string();
    for key in [
        "kafka.bootstrap_servers",
        "kafka.sasl_mechanism",
        "kafka.sasl_username",
        "kafka.sasl_password",
        "cassandra.keyspace",
        "service.shutdown_timeout_ms",
    ] {
        assert!(err.contains(&format!("`{key}`")), "{key} missing in {err}");
    }
}

#[test]
fn replication_renders_cql() {
    let simple = ReplicationConfig::default();
    assert_eq!(
        simple.to_cql(),
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    );
    let nts = ReplicationConfig {
        class: ReplicationClass::NetworkTopologyStrategy,
        replication_factor: 0,
        datacenters: [("dc1".to_string(), 3), ("dc2".to_string(), 2)].into(),
    };
    assert_eq!(
        nts.to_cql(),
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    );
}

#[test]
fn unknown_section_from_env_names_the_variable() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only its shape matters
    struct NoCassandra {
        #[serde(default)]
        kafka: KafkaConfig,
    }
    let err = load_from::<NoCassandra>(None, env(&[("TICKFLOW_CASSANDRA__CONTACT_POINTS", "x:1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`cassandra`"), "{err}");
    assert!(err.contains("TICKFLOW_CASSANDRA__CONTACT_POINTS"), "{err}");
}
