"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
every alert has a test where it fires and one where it stays silent, the example Prometheus configuration
passes `promtool check config`, and the ServiceMonitor reads the token the web process is given."""

import shutil
import subprocess

import pytest
import yaml

from .helpers import ROOT, require_binaries

RULES_DIR = ROOT / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERT_TESTS = RULES_DIR / "alerts.test.yml"


@pytest.fixture(autouse=True)
def promtool():
    require_binaries("promtool", package="prometheus")


def promtool_run(*args, cwd=RULES_DIR):
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_rules():
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_pass_promtool_check():
    # as docs/operations.md shows it, from the project root
    result = promtool_run("check", "rules", "deploy/prometheus/alerts.yml", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests():
    result = promtool_run("test", "rules", "deploy/prometheus/alerts.test.yml", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_can_fail(tmp_path):
    """A wrong expectation is caught: the annotations are compared too, not only that something fired."""
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text().replace("1h 13m 20s", "1h 13m 21s"))
    result = promtool_run("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 1 and "ButterRepairableBatchesPersisting" in result.stderr + result.stdout


def test_every_alert_has_a_firing_and_a_silent_case_and_an_actionable_text():
    cases = [case for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in group["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it stays silent"
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert set(rule["annotations"]) == {"summary", "description"}
        assert len(rule["annotations"]["description"]) > 150, f"{name}: say what to do"


def test_the_example_prometheus_config_passes_promtool(tmp_path):
    for name in ("prometheus.example.yml", ALERTS.name):
        shutil.copy(RULES_DIR / name, tmp_path / name)
    config = yaml.safe_load((tmp_path / "prometheus.example.yml").read_text())
    [admin] = [job for job in config["scrape_configs"] if job["job_name"] == "butter-admin"]
    (tmp_path / admin["authorization"]["credentials_file"]).write_text("a-token-for-this-check-only\n")
    result = promtool_run("check", "config", "prometheus.example.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert admin["metrics_path"] == "/metrics" and admin["scrape_timeout"] == "10s"
    [pushgateway] = [job for job in config["scrape_configs"] if job["job_name"] == "pushgateway"]
    assert pushgateway["honor_labels"] is True  # keeps the job/instance labels each run pushed with
    # the alert that watches the endpoint names this scrape job
    [down] = [rule for rule in alert_rules() if rule["alert"] == "ButterMetricsEndpointDown"]
    assert 'up{job="butter-admin"}' in down["expr"]


def test_the_servicemonitor_reads_the_token_the_web_process_is_given():
    monitor = yaml.safe_load((RULES_DIR / "servicemonitor.yaml").read_text())
    secret = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "secret.example.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert credentials == {"name": secret["metadata"]["name"], "key": "METRICS_TOKEN"}
    assert "METRICS_TOKEN" in secret["stringData"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "butter-admin"}
