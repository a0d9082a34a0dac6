//! docker-compose.yml against the code: the variables it sets are ones the
//! worker accepts (checked by the worker's own loader, which refuses unknown
//! ones), its services answer at the code's default URLs once their ports are
//! published, the worker's health and metrics port is published, and
//! `docker compose config` accepts the file where Docker Compose is
//! installed. No Docker engine is needed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;
use session_guard::Settings;
use url::Url;

use crate::helpers::repository_file;

/// The compose service that runs the worker.
const WORKER: &str = "session-guard";
/// The service that serves the sessions API alone (`session-guard api`).
const API: &str = "session-guard-api";
/// Prefix of the variables the worker reads its settings from.
const PREFIX: &str = "SESSION_GUARD__";
/// Variables of the worker's service that are not settings but still read
/// by the worker (tracing's filter, colours).
const OTHER_VARIABLES: &[&str] = &["RUST_LOG", "NO_COLOR"];

fn compose() -> Value {
    serde_yaml_ng::from_str(&repository_file("docker-compose.yml"))
        .expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

/// A scalar of the file as a string (compose accepts numbers and booleans
/// where it means strings).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's `environment`, in either of compose's forms (a map, or a
/// list of `NAME=value`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (name, value) = item.split_once('=').unwrap_or((&item, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

/// A published port: the host's port (or range) and the container's.
#[derive(Debug, PartialEq)]
struct Published {
    host: std::ops::RangeInclusive<u16>,
    container: u16,
}

fn port_range(text: &str) -> std::ops::RangeInclusive<u16> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .unwrap_or_else(|e| panic!("port {p:?}: {e}"))
    };
    match text.split_once('-') {
        Some((first, last)) => parse(first)..=parse(last),
        None => parse(text)..=parse(text),
    }
}

/// A service's `ports`, short (`[IP:]HOST:CONTAINER[/tcp]`, HOST possibly a
/// range) or long (`target`, `published`) syntax. A port not published on
/// the host (`"9464"` alone) is left out.
fn published_ports(service: &Value) -> Vec<Published> {
    let Some(ports) = service.get("ports") else {
        return Vec::new();
    };
    let ports = ports.as_sequence().expect("ports is a list");
    ports
        .iter()
        .filter_map(|port| match port {
            Value::Mapping(_) => Some(Published {
                host: port_range(&scalar(port.get("published")?)),
                container: scalar(&port["target"]).parse().expect("target is a port"),
            }),
            _ => {
                let text = scalar(port);
                let text = text.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [_container] => None,
                    [.., host, container] => Some(Published {
                        host: port_range(host),
                        container: container.parse().expect("a container port"),
                    }),
                    [] => None,
                }
            }
        })
        .collect()
}

/// The settings the worker's service runs with: the worker's own loader,
/// which refuses unknown variables, given the service's environment.
fn worker_settings(compose: &Value) -> Settings {
    settings_of(compose, WORKER)
}

/// The settings a service of the session-guard binary runs with.
fn settings_of(compose: &Value, name: &str) -> Settings {
    let env = environment(service(compose, name));
    Settings::load_from(None, env).unwrap_or_else(|e| {
        panic!("session-guard refuses the environment docker-compose.yml gives {name}:\n{e}")
    })
}

/// That `listen` (a service's listener) takes every interface of its
/// container and is published to the host where the code's default
/// (`default`) would listen, so the README's URLs reach it.
fn assert_published(compose: &Value, name: &str, listen: &str, default: &str) {
    let listen: std::net::SocketAddr = listen
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {listen:?}: {e}"));
    assert!(
        listen.ip().is_unspecified(),
        "{name}: {listen}: only the container itself could reach it"
    );
    let ports = published_ports(service(compose, name));
    let published = ports
        .iter()
        .find(|p| p.container == listen.port())
        .unwrap_or_else(|| panic!("{name}: port {} is not published: {ports:?}", listen.port()));
    let default: std::net::SocketAddr = default.parse().unwrap();
    assert_eq!(
        *published.host.start(),
        default.port(),
        "{name}: one replica answers where the code's default would"
    );
}

#[test]
fn compose_sets_only_variables_the_worker_accepts() {
    let compose = compose();
    for name in [WORKER, API] {
        let env = environment(service(&compose, name));
        for variable in env.keys() {
            assert!(
                variable.starts_with(PREFIX) || OTHER_VARIABLES.contains(&variable.as_str()),
                "{name}: {variable} is read by nobody"
            );
        }
        settings_of(&compose, name);
    }
    let env = environment(service(&compose, WORKER));
    let settings: Vec<_> = env.keys().filter(|k| k.starts_with(PREFIX)).collect();
    assert!(
        settings.len() >= 3,
        "the worker's service sets its URLs and listener: {env:?}"
    );
    for name in env.keys() {
        assert!(
            name.starts_with(PREFIX) || OTHER_VARIABLES.contains(&name.as_str()),
            "{name} is read by nobody"
        );
    }
    worker_settings(&compose);

    // The same check refuses a misspelt variable: it does not pass by
    // accepting anything.
    let mut misspelt = env.clone();
    misspelt.insert("SESSION_GUARD__HTTP__LISTN".into(), "0.0.0.0:9464".into());
    let error = Settings::load_from(None, misspelt)
        .expect_err("an unknown variable is refused")
        .to_string();
    assert!(error.contains("SESSION_GUARD__HTTP__LISTN"), "{error}");
}

#[test]
fn compose_publishes_the_ports_the_worker_and_the_code_use() {
    let compose = compose();
    let settings = worker_settings(&compose);
    let defaults = Settings::load_from(None, Vec::new()).expect("the defaults load");

    // The health and metrics endpoint of every worker (one port per
    // replica), and the sessions API of its own service; the workers serve
    // no API, so consumers and API servers scale apart.
    assert_published(
        &compose,
        WORKER,
        &settings.http.listen,
        &defaults.http.listen,
    );
    assert!(
        settings.api.listen.is_empty(),
        "the workers serve the API too: {:?}",
        settings.api.listen
    );
    let api = settings_of(&compose, API);
    assert_published(&compose, API, &api.api.listen, &defaults.api.listen);
    assert_eq!(
        api.database.url, settings.database.url,
        "the API reads the log the workers write"
    );
    let command = service(&compose, API)["command"][0].as_str();
    assert_eq!(command, Some("api"), "the API service only serves the API");

    // PostgreSQL and RabbitMQ: the worker reaches them by service name; from
    // the host, the code's default URLs reach the same server with the same
    // credentials, database and vhost.
    // Of the workers' broker list, the first node is the one the code's
    // default reaches; the others are the cluster profile's
    // (`the_cluster_profile_adds_the_nodes_the_workers_list`).
    let brokers = session_guard_amqp::url::split_urls(&settings.amqp.url);
    for (inside, default) in [
        (&settings.database.url, &defaults.database.url),
        (&brokers[0].to_owned(), &defaults.amqp.url),
    ] {
        let inside = Url::parse(inside).unwrap();
        let default = Url::parse(default).unwrap();
        let host = inside.host_str().expect("a host");
        let server = service(&compose, host);
        let port = inside.port_or_known_default().or(match inside.scheme() {
            "amqp" => Some(5672),
            "postgres" => Some(5432),
            _ => None,
        });
        let published = published_ports(server);
        assert!(
            published.iter().any(|p| Some(p.container) == port
                && p.host
                    .contains(&default.port().expect("the default URL has a port"))),
            "{host}: port {port:?} is not published on {:?}: {published:?}",
            default.port()
        );
        assert_eq!(default.host_str(), Some("127.0.0.1"));
        let mut same = inside.clone();
        same.set_host(Some("127.0.0.1")).unwrap();
        same.set_port(default.port()).unwrap();
        assert_eq!(
            same.as_str(),
            default.as_str(),
            "the compose URL differs from the code's default but for the host"
        );
    }
}

#[test]
fn the_cluster_profile_adds_the_nodes_the_workers_list() {
    let compose = compose();
    let settings = worker_settings(&compose);
    let brokers = session_guard_amqp::url::split_urls(&settings.amqp.url);
    assert_eq!(brokers.len(), 3, "three nodes: {}", settings.amqp.url);
    let peers = repository_file("deploy/rabbitmq/cluster.conf");
    let first = service(&compose, "rabbitmq");
    let cookie = &environment(first)["RABBITMQ_ERLANG_COOKIE"];
    let worker = service(&compose, WORKER);
    for (i, url) in brokers.iter().enumerate() {
        let url = Url::parse(url).unwrap();
        let host = url.host_str().unwrap();
        let node = service(&compose, host);
        // The node's name, rabbit@<hostname>, is a peer of the others.
        assert_eq!(node["hostname"].as_str(), Some(host));
        assert!(
            peers.contains(&format!("nodes.{} = rabbit@{host}", i + 1)),
            "{host} is not a peer in cluster.conf:\n{peers}"
        );
        assert_eq!(
            &environment(node)["RABBITMQ_ERLANG_COOKIE"],
            cookie,
            "{host}: the nodes of a cluster share one cookie"
        );
        let mounts = format!("{:?}", node["volumes"]);
        assert!(mounts.contains("cluster.conf"), "{host}: {mounts}");
        if i > 0 {
            // Only in the profile; the workers wait for them there, and
            // without it the dependency is dropped.
            assert_eq!(node["profiles"][0].as_str(), Some("cluster"), "{host}");
            let dependency = &worker["depends_on"][host];
            assert_eq!(dependency["condition"].as_str(), Some("service_healthy"));
            assert_eq!(dependency["required"].as_bool(), Some(false), "{host}");
            // Reachable from the host, next to the first node's 5672.
            let published = published_ports(node);
            assert!(
                published
                    .iter()
                    .any(|p| p.container == 5672 && p.host.contains(&(5672 + i as u16))),
                "{host}: {published:?}"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_the_port_the_worker_listens_on() {
    let compose = compose();
    let settings = worker_settings(&compose);
    let listen: std::net::SocketAddr = settings.http.listen.parse().unwrap();
    let prometheus: Value =
        serde_yaml_ng::from_str(&repository_file("deploy/prometheus/prometheus.yml")).unwrap();
    let jobs = prometheus["scrape_configs"].as_sequence().unwrap();
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some(WORKER))
        .expect("a scrape job for the workers");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["names"][0].as_str(), Some(WORKER));
    assert_eq!(sd["port"].as_u64(), Some(u64::from(listen.port())));
    // The monitoring profile's services mount what they read.
    for (name, file) in [
        ("prometheus", "./deploy/prometheus/alerts.yml"),
        ("prometheus", "./deploy/prometheus/prometheus.yml"),
        ("grafana", "./deploy/grafana/provisioning"),
        ("grafana", "./deploy/grafana/dashboards"),
    ] {
        let server = service(&compose, name);
        assert_eq!(server["profiles"][0].as_str(), Some("monitoring"), "{name}");
        let mounted = server["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| scalar(v).starts_with(&format!("{file}:")));
        assert!(mounted, "{name} does not mount {file}");
        let local = file.trim_start_matches("./");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(local).exists(),
            "{local}"
        );
    }
}

/// `docker compose config`, with and without the monitoring profile, where
/// Docker Compose is installed (it needs no engine for this); elsewhere the
/// test says it skipped that step, and the checks above still ran.
#[test]
fn docker_compose_config_accepts_the_file() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let available = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        eprintln!("skipped `docker compose config`: `docker compose version` fails here");
        return;
    }
    for profile in [&[][..], &["--profile", "monitoring"][..]] {
        let out = std::process::Command::new("docker")
            .current_dir(dir)
            .arg("compose")
            .args(profile)
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .output()
            .expect("docker runs");
        assert!(
            out.status.success(),
            "docker compose {profile:?} config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
