//! `prepare`: what it builds for each kind of change, the restart-required keys, and that
//! every rejection leaves the state it was given untouched.

use super::*;
use crate::config::TlsConfig;
use crate::config::sources;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap()
}

fn candidate(config: Config) -> Candidate {
    Candidate {
        config,
        tls_pem: None,
        backend: None,
    }
}

fn current<'a>(started: &'a Config, config: &'a Config) -> Current<'a> {
    Current {
        started,
        config,
        tls: None,
    }
}

#[test]
fn the_same_config_prepares_no_settings() {
    let old = config("allowed_origins: [\"http://a\"]\n");
    let prepared = prepare(&current(&old, &old), candidate(old.clone())).unwrap();
    assert!(prepared.settings.is_none());
    assert!(prepared.certificate.is_none());
    assert!(prepared.log_filter.is_none());
    assert!(prepared.hub.is_none());
}

#[test]
fn a_live_change_builds_only_what_changed() {
    let old = config("allowed_origins: [\"http://a\"]\n");
    let new = config("allowed_origins: [\"http://b\"]\nping_interval: 20s\n");
    let prepared = prepare(&current(&old, &old), candidate(new.clone())).unwrap();
    let plan = prepared.settings.expect("settings");
    assert_eq!(*plan.config, new);
    assert!(plan.restart_required.is_empty());
    assert!(!plan.relink);
    assert!(matches!(plan.backend, BackendPlan::Keep));
    assert!(prepared.hub.is_none(), "hub unchanged");
    assert!(prepared.log_filter.is_none(), "log.level unchanged");
}

#[test]
fn log_level_hub_and_upstream_changes_are_prepared() {
    let old = Config::default();
    let new = config(
        "log:\n  level: \"warn,sidewire=debug\"\nhub:\n  history_size: 5\nupstream:\n  endpoint: \"http://127.0.0.1:1\"\n",
    );
    let prepared = prepare(&current(&old, &old), candidate(new)).unwrap();
    let filter = prepared.log_filter.expect("new log filter");
    assert_eq!(filter.to_string(), "sidewire=debug,warn");
    assert_eq!(prepared.hub.expect("new hub settings").history_size, 5);
    assert!(prepared.settings.expect("settings").relink);
}

#[test]
fn restart_only_keys_are_compared_with_the_started_config() {
    let started = Config::default();
    // A reload already moved `listen`; the next one changes something else: `listen` still
    // differs from what the listener was bound to.
    let in_force = config("listen: \"127.0.0.1:7001\"\n");
    let new = config("listen: \"127.0.0.1:7001\"\nallowed_origins: [\"http://b\"]\n");
    let prepared = prepare(&current(&started, &in_force), candidate(new)).unwrap();
    assert_eq!(prepared.settings.unwrap().restart_required, ["listen"]);
    // Back to the started value: nothing pending.
    let prepared = prepare(&current(&started, &in_force), candidate(started.clone())).unwrap();
    assert!(prepared.settings.unwrap().restart_required.is_empty());
}

#[test]
fn each_restart_only_key_is_detected_alone() {
    let cases: &[(&str, &str)] = &[
        ("listen", "listen: \"127.0.0.1:7001\"\n"),
        ("admin_listen", "admin_listen: \"127.0.0.1:7002\"\n"),
        ("tls", "tls:\n  cert_file: c\n  key_file: k\n"),
        ("log.format", "log:\n  format: json\n"),
        ("max_connections", "max_connections: 7\n"),
        ("max_connections_per_ip", "max_connections_per_ip: 7\n"),
        (
            "engine",
            "engine:\n  type: redis\n  redis:\n    address: \"redis://127.0.0.1:1\"\n",
        ),
    ];
    let started = Config::default();
    for (key, yaml) in cases {
        assert_eq!(restart_required(&started, &config(yaml)), [*key], "{yaml}");
    }
    let listed: Vec<&str> = RESTART_ONLY.iter().map(|(key, _)| *key).collect();
    let cased: Vec<&str> = cases.iter().map(|(key, _)| *key).collect();
    assert_eq!(listed, cased, "every restart-only key has a case here");
    // Certificate paths reload; only switching TLS on or off needs a restart.
    let with_tls = config("tls:\n  cert_file: c\n  key_file: k\n");
    let moved = config("tls:\n  cert_file: c2\n  key_file: k2\n");
    assert!(restart_required(&with_tls, &moved).is_empty());
}

/// Whether `path` is `entry` or lies under it.
fn covered_by(path: &str, entry: &str) -> bool {
    path == entry
        || path
            .strip_prefix(entry)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[test]
fn every_schema_key_is_classified_as_live_or_restart_only() {
    let schema = sources::schema();
    let entries: Vec<&str> = RESTART_ONLY
        .iter()
        .map(|(key, _)| *key)
        .chain(LIVE.iter().copied())
        .collect();
    for path in schema.leaves.keys() {
        assert!(
            entries.iter().any(|entry| covered_by(path, entry)),
            "{path} is neither in RESTART_ONLY nor in LIVE"
        );
    }
    for entry in &entries {
        assert!(
            schema.leaves.contains_key(*entry) || schema.sections.contains_key(*entry),
            "{entry} is not a key of the schema"
        );
    }
}

/// A runtime, because a backend's connection pool spawns its reaper.
#[tokio::test]
async fn backend_changes_use_the_backend_loaded_for_them() {
    let old = config("backend:\n  url: \"http://127.0.0.1:1\"\n");
    let removed = prepare(&current(&old, &old), candidate(Config::default())).unwrap();
    assert!(matches!(
        removed.settings.unwrap().backend,
        BackendPlan::Replace(None)
    ));

    let new = config("backend:\n  url: \"http://127.0.0.1:2\"\n");
    let section = new.backend.clone().unwrap();
    let error = prepare(&current(&old, &old), candidate(new.clone()))
        .err()
        .expect("no backend was loaded");
    assert!(matches!(error, Rejection::NotLoaded("backend")), "{error}");
    // A backend built for another section is not used.
    let stale = old.backend.clone().unwrap();
    let built = Backend::new(&stale).unwrap();
    let mut mismatched = candidate(new.clone());
    mismatched.backend = Some((stale, built));
    assert!(prepare(&current(&old, &old), mismatched).is_err());

    let mut loaded = candidate(new);
    loaded.backend = Some((section.clone(), Backend::new(&section).unwrap()));
    let prepared = prepare(&current(&old, &old), loaded).unwrap();
    assert!(matches!(
        prepared.settings.unwrap().backend,
        BackendPlan::Replace(Some(_))
    ));
}

/// A self-signed certificate and its key, PEM.
fn pem_pair() -> TlsPem {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TlsPem {
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    }
}

/// A resolver serving a certificate written to `dir`, and the config naming it.
fn resolver(dir: &std::path::Path) -> (Arc<CertResolver>, Config) {
    let pem = pem_pair();
    std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
    let tls = TlsConfig {
        cert_file: dir.join("tls.crt").display().to_string(),
        key_file: dir.join("tls.key").display().to_string(),
        client_ca_file: None,
        compact_record_keys: None,
    };
    let resolver = CertResolver::new(&tls).unwrap();
    let config = Config {
        tls: Some(tls),
        ..Config::default()
    };
    (resolver, config)
}

#[test]
fn certificates_are_built_but_not_served_until_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, old) = resolver(dir.path());
    let serving = resolver.current();
    let state = Current {
        started: &old,
        config: &old,
        tls: Some(&resolver),
    };
    // Same config, rotated files: a certificate to install, no settings.
    let mut rotated = candidate(old.clone());
    rotated.tls_pem = Some(pem_pair());
    let prepared = prepare(&state, rotated).unwrap();
    let certificate = prepared.certificate.expect("rotated certificate");
    assert!(prepared.settings.is_none());
    assert!(
        Arc::ptr_eq(&resolver.current(), &serving),
        "not swapped yet"
    );
    assert!(!Arc::ptr_eq(&certificate, &serving));
}

#[tokio::test]
async fn every_rejection_leaves_the_served_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, old) = resolver(dir.path());
    let serving = resolver.current();
    let before = old.clone();
    let state = Current {
        started: &old,
        config: &old,
        tls: Some(&resolver),
    };
    let mut change = old.clone();
    change.allowed_origins = vec!["http://b".to_owned()];
    change.log.level = "debug".parse().unwrap();
    change.hub.history_size = 3;

    let mut missing = candidate(change.clone());
    missing.tls_pem = None;
    let mut garbage = candidate(change.clone());
    garbage.tls_pem = Some(TlsPem {
        cert: b"not a certificate".to_vec(),
        key: b"not a key".to_vec(),
    });
    let mut mismatched_key = candidate(change.clone());
    mismatched_key.tls_pem = Some(TlsPem {
        cert: pem_pair().cert,
        key: pem_pair().key,
    });
    let mut no_backend = candidate(change.clone());
    no_backend.config.backend = Some(BackendConfig {
        url: crate::config::HttpUrl::new("http://127.0.0.1:3"),
        ..BackendConfig::default()
    });
    no_backend.tls_pem = Some(pem_pair());
    for (name, attempt) in [
        ("certificate not read", missing),
        ("certificate garbage", garbage),
        ("key of another certificate", mismatched_key),
        ("backend not built", no_backend),
    ] {
        let rejection = prepare(&state, attempt).err().expect(name);
        match (name, &rejection) {
            ("certificate garbage", Rejection::Tls(TlsError::Cert { .. }))
            | ("key of another certificate", Rejection::Tls(TlsError::Key { .. }))
            | ("certificate not read", Rejection::NotLoaded("tls.cert_file"))
            | ("backend not built", Rejection::NotLoaded("backend")) => {}
            _ => panic!("{name}: unexpected {rejection:?}"),
        }
        assert!(Arc::ptr_eq(&resolver.current(), &serving), "{name}");
        assert_eq!(old, before, "{name}");
    }
}
