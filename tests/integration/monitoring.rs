//! The Grafana dashboard and the Prometheus alert rules (deploy/) against a
//! real worker: every metric their queries use is one the worker exports;
//! the rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`); every alert has its runbook in OPERATIONS.md
//! and unit tests where it fires and where it does not.

use std::collections::BTreeSet;

use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use session_guard::Settings;
use session_guard::metric::{self, Kind};

use crate::helpers::*;

const DASHBOARD: &str = "deploy/grafana/dashboards/session-guard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts_test.yml";
const OPERATIONS: &str = "docs/OPERATIONS.md";
/// Series Prometheus itself writes for every scrape target, not the worker.
const SCRAPE_SERIES: &[&str] = &["up"];

/// Collects the metric names of a query's selectors.
struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = selector
            .name
            .clone()
            .ok_or_else(|| format!("a selector without a metric name: {selector}"))?;
        self.0.insert(name);
        Ok(true)
    }
}

/// The metric names `query` reads, once Grafana's variables are replaced by
/// values of the right kind.
fn metric_names(query: &str) -> BTreeSet<String> {
    let promql = query
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
        .replace("$job", ".*");
    let expr = promql_parser::parser::parse(&promql)
        .unwrap_or_else(|e| panic!("not PromQL: {query}\n{e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &expr).unwrap_or_else(|e| panic!("{query}: {e}"));
    names.0
}

/// Every query of the dashboard: each `expr` of its panels, and the
/// metric of each `label_values(METRIC, label)` variable.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Json, out: &mut Vec<String>) {
        match value {
            Json::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Json::String(q)) => out.push(q.clone()),
                        ("definition", Json::String(q)) => {
                            let inner = q
                                .strip_prefix("label_values(")
                                .and_then(|rest| rest.rsplit_once(','))
                                .map(|(metric, _label)| metric.to_owned())
                                .unwrap_or_else(|| panic!("a variable query of another kind: {q}"));
                            out.push(inner);
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: Json =
        serde_json::from_str(&repository_file(DASHBOARD)).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    queries
}

fn alert_rules() -> Vec<Yaml> {
    let rules: Yaml = serde_yaml_ng::from_str(&repository_file(ALERTS)).expect("alerts.yml");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// The names a scrape of `/metrics` holds: every `# TYPE` line's metric, a
/// histogram's as its `_bucket`, `_sum` and `_count` series.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn the_name_extraction_sees_through_functions_and_grafana_variables() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~\"$instance\"}[$__rate_interval]))) \
             > on() group_left max(b) or absent(c == 1) and up{job=\"x\"} offset 5m"
        ),
        ["a_bucket", "b", "c", "up"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

/// A test with a worker process serving its health endpoint, once ready;
/// and where that endpoint listens.
async fn worker_process(configure: impl FnOnce(&mut Settings)) -> (TestApp, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut app = spawn_app_without_worker(|s| {
        s.http.listen = listen.clone();
        configure(s);
    })
    .await;
    app.spawn_process();
    app.wait_for("the worker to be ready", || async {
        http_get(&listen, "/health/ready")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    (app, listen)
}

/// A real worker process, after it revoked a session and dead-lettered an
/// event, exports every metric the dashboard and the alert rules read.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_read_is_exported() {
    let (mut app, listen) = worker_process(|_| {}).await;
    app.publish(&login("shop", "m1", "mo", t(0))).await;
    app.publish(&login("shop", "m2", "mo", t(1))).await;
    app.publish_raw("login.shop", b"not json").await;
    app.next_dead_letter().await;
    let revoked = format!(
        "{}{{reason=\"session_limit\"}} 1",
        metric::SESSIONS_REVOKED.name
    );
    let counted = format!(
        "{}{{kind=\"invalid\"}} 1",
        metric::EVENTS_DEAD_LETTERED.name
    );
    app.wait_for("the revoke and the dead letter to be counted", || async {
        http_get(&listen, "/metrics")
            .await
            .is_some_and(|(status, m)| {
                status == 200 && m.contains(&revoked) && m.contains(&counted)
            })
    })
    .await;
    let (_, scrape) = http_get(&listen, "/metrics")
        .await
        .expect("the worker answers");
    drop(app);

    let exported = exported_names(&scrape);
    for m in metric::ALL {
        let name = match m.kind {
            Kind::Histogram(_) => format!("{}_bucket", m.name),
            _ => m.name.to_owned(),
        };
        assert!(exported.contains(&name), "{name} is not in the scrape");
    }

    let mut queries: Vec<(&str, String)> = dashboard_queries()
        .into_iter()
        .map(|q| (DASHBOARD, q))
        .collect();
    assert!(
        queries.len() >= 20,
        "the dashboard has few queries: {queries:?}"
    );
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        queries.push((ALERTS, expr.to_owned()));
    }
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (file, query) in &queries {
        for name in metric_names(query) {
            if !exported.contains(&name) && !SCRAPE_SERIES.contains(&name.as_str()) {
                unknown.push(format!("{file}: {name} in {query}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the worker does not export:\n{}",
        unknown.join("\n")
    );
    // The measures the dashboard is for are all there.
    for m in [
        &metric::EVENTS,
        &metric::EVENT_LAG,
        &metric::BATCH_DURATION,
        &metric::SESSIONS_REVOKED,
        &metric::OUTBOX_BACKLOG,
        &metric::OUTBOX_OLDEST_AGE,
        &metric::EVENTS_DEAD_LETTERED,
        &metric::QUEUE_MESSAGES,
        &metric::DATABASE_RETRIES,
        &metric::DATABASE_UP,
        &metric::BROKER_UP,
    ] {
        assert!(
            used.iter().any(|u| u.starts_with(m.name)),
            "neither the dashboard nor the alerts read {}",
            m.name
        );
    }
}

/// The value of `series` (name and labels, as rendered) in a scrape.
fn value_of(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The queue gauge counts what waits in the events queue, as the broker
/// says: a worker whose database is cut off holds one delivery (prefetch 1)
/// and reports the others waiting; once the database is back the backlog
/// drains and the gauge says so.
#[tokio::test]
async fn the_queue_gauge_counts_the_events_waiting() {
    let (app, listen) = worker_process(|s| {
        s.worker.batch_size = 1;
        s.amqp.prefetch = 1;
    })
    .await;
    let events = format!("{}{{queue=\"events\"}}", metric::QUEUE_MESSAGES.name);
    let dead = format!("{}{{queue=\"dead_letter\"}}", metric::QUEUE_MESSAGES.name);
    let gauge = |series: &str| {
        let series = series.to_owned();
        let listen = listen.clone();
        async move {
            let (_, scrape) = http_get(&listen, "/metrics").await?;
            value_of(&scrape, &series)
        }
    };
    assert_eq!(gauge(&dead).await, Some(0.0), "both queues are reported");

    app.cut_database().await;
    for i in 0..6 {
        app.publish(&login("shop", &format!("q{i}"), &format!("u{i}"), t(i)))
            .await;
    }
    // One delivery is with the worker (or back in the queue between its
    // attempts); the rest wait.
    app.wait_for("the gauge to count the events waiting", || async {
        gauge(&events).await.is_some_and(|n| n >= 5.0)
    })
    .await;
    app.restore_database().await;
    app.wait_for("the gauge to see the queue drained", || async {
        gauge(&events).await == Some(0.0)
    })
    .await;
}

/// `promtool check rules` and `promtool test rules` (alerts_test.yml). CI
/// installs promtool (Debian's `prometheus` package) when it is missing;
/// elsewhere the test says it skipped.
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!(
            "skipped: promtool is not installed (apt-get install prometheus; .ci/run installs it)"
        );
        return;
    }
    for (command, file) in [("check", ALERTS), ("test", ALERT_TESTS)] {
        let out = std::process::Command::new("promtool")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([command, "rules", file])
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {command} rules {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The anchor GitHub gives a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_and_tests_that_fire_it_and_do_not() {
    let operations = repository_file(OPERATIONS);
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let tests: Yaml = serde_yaml_ng::from_str(&repository_file(ALERT_TESTS)).unwrap();
    let cases: Vec<&Yaml> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 6, "{rules:?}");
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alerting rules only");
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} has no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let target = url
            .strip_prefix(&format!("{OPERATIONS}#"))
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not in {OPERATIONS}"));
        assert!(
            anchors.contains(target),
            "{name}: {OPERATIONS} has no heading for #{target}"
        );
        assert!(
            operations.contains(&format!("`{name}`")) || operations.contains(name),
            "{name} is not named in {OPERATIONS}"
        );
        let of_rule = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(name));
        let (firing, quiet): (Vec<&&Yaml>, Vec<&&Yaml>) = of_rule.partition(|c| {
            c["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty())
        });
        assert!(!firing.is_empty(), "{name}: no unit test where it fires");
        assert!(!quiet.is_empty(), "{name}: no unit test where it does not");
    }
}
