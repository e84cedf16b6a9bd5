//! The chart's alerting rules and Grafana dashboard against promtool and the operator's
//! real `/metrics`: the rules are valid and each alert fires when it should and only then,
//! every alert has a runbook in docs/alerts.md, the metrics pass promtool's lint, and
//! every metric the rules and the dashboard name is one the operator exports.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::service::*;
use support::*;

const RULES: &str = "charts/perennial/alerts/perennial.rules.yaml";
const RULE_TESTS: &str = "tests/alerts/perennial.rules.test.yaml";
const DASHBOARD: &str = "charts/perennial/dashboards/perennial.json";
const RUNBOOKS: &str = "docs/alerts.md";
/// Where the rules' runbook links point (the chart's default runbookBaseUrl).
const RUNBOOK_BASE: &str = "https://github.com/perennial/perennial/blob/main/docs/alerts.md";
/// A crash loop seen and entered in the ledger, with room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs promtool with `args` in `dir`, `stdin` as its input; returns (success, stdout and
/// stderr).
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let bin = promtool_bin();
    assert!(
        bin.exists(),
        "no {} (e2e/cluster/build builds it)",
        bin.display()
    );
    let mut command = Command::new(&bin);
    command.current_dir(dir).args(args);
    let (ok, out, err) = output_of(command, stdin);
    (ok, format!("{out}{err}"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("parse {relative}: {e}"))
}

/// Every alerting rule of the rules file.
fn alerts() -> Vec<Value> {
    yaml(RULES)["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// The `perennial_*` metric names `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("perennial_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The metric names of the samples of a scrape.
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn promtool_check_rules_accepts_the_charts_rules_file() {
    let (ok, out) = promtool(&repo_root(), &["check", "rules", RULES], None);
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    let rules = alerts().len();
    assert!(
        out.contains(&format!("SUCCESS: {rules} rules found")),
        "{out}"
    );
}

#[test]
fn every_alert_fires_when_its_condition_holds_long_enough_and_not_before_in_promtool_test_rules() {
    let (ok, out) = promtool(&repo_root(), &["test", "rules", RULE_TESTS], None);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");

    // Each alert has a case where it fires and one where it does not.
    let cases: Vec<(String, bool)> = yaml(RULE_TESTS)["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let fires = c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            (
                c["alertname"].as_str().unwrap_or_default().to_string(),
                fires,
            )
        })
        .collect();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.to_string(), fires)),
                "{RULE_TESTS} has no case where {name} {}",
                if fires { "fires" } else { "stays silent" }
            );
        }
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section_in_docs_alerts_md() {
    let runbooks = read(RUNBOOKS);
    let sections: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            matches!(
                alert["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}: severity"
        );
        assert!(
            alert["annotations"]["summary"].as_str().is_some(),
            "{name}: summary"
        );
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = url
            .strip_prefix(&format!("{RUNBOOK_BASE}#"))
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} is not in {RUNBOOKS}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook_url {url}");
        assert!(
            sections.contains(anchor),
            "{RUNBOOKS} has no section ## {name}"
        );
    }
}

#[tokio::test]
async fn the_operators_real_metrics_pass_promtool_lint_and_include_every_metric_the_rules_and_dashboard_use(
) {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let mut used = metric_names(&read(RULES));
    let from_dashboard = metric_names(&read(DASHBOARD));
    assert!(!from_dashboard.is_empty(), "the dashboard names no metric");
    used.extend(from_dashboard);

    // A healthy service and a crash-looping one: replica, condition and failure series.
    let ns = TestNamespace::new("alerts-metrics").await;
    let operator = Operator::with_crd(&ns).await;
    let addr = metrics_addr(&operator).await;
    create_service(&ns, &service("web", 2, "example/app:1", json!({}))).await;
    create_service(
        &ns,
        &service("crashy", 1, "example/app:1", crash_looping("crashy")),
    )
    .await;

    let text = wait_for(
        "every metric the rules and the dashboard use in /metrics",
        TIMEOUT,
        || {
            let (addr, used) = (addr.clone(), &used);
            async move {
                let text = scrape(&addr).await;
                let body = text
                    .split("\r\n\r\n")
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let have = exported(&body);
                let missing: Vec<&String> = used.difference(&have).collect();
                if missing.is_empty() {
                    Ok(body)
                } else {
                    Err(format!("missing {missing:?}; exported {have:?}"))
                }
            }
        },
    )
    .await;
    let (ok, out) = promtool(&repo_root(), &["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics finds problems in /metrics:\n{out}\n{text}"
    );
}
