"""Writes grafana/dashboards/vigil-overview.json and vigil-drift.json.

    python3 grafana/make_dashboards.py

The dashboards are generated so that every panel follows the same conventions: the
`${datasource}` variable, `model`/`version` template variables from label_values, and
`$__rate_interval` for rates. tests/observability.py runs every expression against a
real Prometheus.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SEL = 'model=~"$model", version=~"$version"'
DS = {"type": "prometheus", "uid": "${datasource}"}
NOT_OK = 'outcome!="success"'


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(pid, title, desc, targets, x, y, w=12, h=8, kind="timeseries", unit=None):
    p = {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit or "short"}, "overrides": []},
        "options": {},
    }
    if kind == "table":
        for t in p["targets"]:
            t["format"] = "table"
            t["instant"] = True
            t["range"] = False
    return p


def variables(with_version=True):
    v = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {}, "hide": 0},
        {"name": "model", "type": "query", "datasource": DS, "label": "Model",
         "query": {"query": "label_values(vigil_model_loaded, model)", "refId": "model"},
         "definition": "label_values(vigil_model_loaded, model)", "refresh": 2,
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0},
    ]
    if with_version:
        v.append({"name": "version", "type": "query", "datasource": DS, "label": "Version",
                  "query": {"query": 'label_values(vigil_model_loaded{model=~"$model"}, version)',
                            "refId": "version"},
                  "definition": 'label_values(vigil_model_loaded{model=~"$model"}, version)',
                  "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {},
                  "hide": 0})
    return v


def dashboard(uid, title, panels):
    return {
        "uid": uid, "title": title, "tags": ["vigil"], "timezone": "browser", "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def rate(metric, extra=""):
    sel = SEL + (", " + extra if extra else "")
    return f"rate({metric}{{{sel}}}[$__rate_interval])"


def by_role(expr):
    # Attach the role label (stable/canary) of the version that served.
    return f"({expr}) * on (model, version) group_left (role) vigil_model_loaded"


overview = dashboard("vigil-overview", "vigil — overview", [
    panel(1, "Request rate", "Inference requests per second, per model and version.",
          [(f"sum by (model, version) ({rate('vigil_inference_requests_total')})", "{{model}} v{{version}}")],
          0, 0, unit="reqps"),
    panel(2, "Error rate", "Share of requests that did not succeed (bad requests, overload, errors).",
          [(f"sum by (model, version) ({rate('vigil_inference_requests_total', NOT_OK)})"
            f" / sum by (model, version) ({rate('vigil_inference_requests_total')})", "{{model}} v{{version}}")],
          12, 0, unit="percentunit"),
    panel(3, "Latency p50 / p95 / p99", "Request latency from the request-duration histogram.",
          [(f"histogram_quantile({q}, sum by (model, version, le) ({rate('vigil_inference_request_duration_seconds_bucket')}))",
            f"p{int(q * 100)} {{{{model}}}} v{{{{version}}}}") for q in (0.5, 0.95, 0.99)],
          0, 8, unit="s"),
    panel(4, "Queue vs compute time", "Mean time waiting for a worker vs running the model.",
          [(f"sum by (model, version) ({rate('vigil_inference_queue_duration_seconds_sum')})"
            f" / sum by (model, version) ({rate('vigil_inference_queue_duration_seconds_count')})", "queue {{model}} v{{version}}"),
           (f"sum by (model, version) ({rate('vigil_inference_compute_duration_seconds_sum')})"
            f" / sum by (model, version) ({rate('vigil_inference_compute_duration_seconds_count')})", "compute {{model}} v{{version}}")],
          12, 8, unit="s"),
    panel(5, "Batch size", "Rows per model execution (median and p99).",
          [(f"histogram_quantile({q}, sum by (model, version, le) ({rate('vigil_inference_batch_size_bucket')}))",
            f"p{int(q * 100)} {{{{model}}}} v{{{{version}}}}") for q in (0.5, 0.99)],
          0, 16),
    panel(6, "Loaded versions and roles", "Every loaded version with its role (stable, canary, standby).",
          [('vigil_model_loaded{model=~"$model"}', "{{model}} v{{version}} {{role}}")],
          12, 16, kind="table"),
    panel(7, "Canary weight", "Percent of unpinned requests the canary answers.",
          [('vigil_rollout_canary_weight{model=~"$model"}', "{{model}}")],
          0, 24, w=6, unit="percent"),
    panel(8, "Canary vs stable error rate", "Error rate of the canary next to the stable version.",
          [(f"sum by (model, role) ({by_role(rate('vigil_inference_requests_total', NOT_OK))})"
            f" / sum by (model, role) ({by_role(rate('vigil_inference_requests_total'))})", "{{model}} {{role}}")],
          6, 24, w=9, unit="percentunit"),
    panel(9, "Canary vs stable p99", "p99 latency of the canary next to the stable version.",
          [(f"histogram_quantile(0.99, sum by (model, role, le) ({by_role(rate('vigil_inference_request_duration_seconds_bucket'))}))",
            "{{model}} {{role}}")],
          15, 24, w=9, unit="s"),
    panel(10, "In flight and queue depth", "Requests being served, and jobs waiting for a worker.",
          [("sum(vigil_inference_in_flight)", "in flight"), ("sum(vigil_inference_queue_depth)", "queued")],
          0, 32),
    panel(11, "Process CPU and memory", "CPU seconds per second and resident memory of each vigil.",
          [('rate(process_cpu_seconds_total{job=~"vigil.*"}[$__rate_interval])', "cpu {{instance}}"),
           ('process_resident_memory_bytes{job=~"vigil.*"}', "rss {{instance}}")],
          12, 32),
    panel(12, "Canary analysis step", "The step the canary judge is at (1-based; 0 when no analysis runs).",
          [('vigil_canary_step{model=~"$model"}', "{{model}}")],
          0, 40, w=8),
    panel(13, "Canary judge decisions", "Decisions of the canary judge over the range, by decision and check.",
          [('sum by (model, decision, check) (increase(vigil_canary_decisions_total{model=~"$model"}[$__range]))',
            "{{model}} {{decision}} {{check}}")],
          8, 40, w=16, kind="table"),
    panel(14, "Live quality (labelled)", "Accuracy and macro F1 over each version's rolling window of labelled rows "
          "(feedback joined by request id; [logging] feedback_window).",
          [(f'vigil_model_quality{{{SEL}, metric=~"accuracy|macro_f1"}}', "{{model}} v{{version}} {{metric}}")],
          0, 48, unit="percentunit"),
    panel(15, "Expected accuracy (no labels) and labels pending",
          "Accuracy expected from the calibrated predicted probabilities (CBPE), beside predicted rows still "
          "waiting for their label.",
          [(f'vigil_model_quality{{{SEL}, metric="expected_accuracy"}}', "expected {{model}} v{{version}}"),
           ('vigil_feedback_pending{model=~"$model"}', "pending {{model}}")],
          12, 48),
])

drift = dashboard("vigil-drift", "vigil — drift and retraining", [
    panel(1, "Drift share", "Share of input features that drifted in each closed window.",
          [(f"vigil_drift_share{{{SEL}}}", "{{model}} v{{version}}")], 0, 0, unit="percentunit"),
    panel(2, "Drift status", "1 while a version is drifting (enough drifted windows in a row).",
          [(f"vigil_drift_status{{{SEL}}}", "{{model}} v{{version}}")], 12, 0),
    panel(3, "PSI per feature", "Population Stability Index of each input and output feature (side) in the last window.",
          [(f'vigil_drift_score{{{SEL}, method="psi"}}', "{{model}} v{{version}} {{side}} {{feature}}")],
          0, 8, w=8, kind="table"),
    panel(4, "KS p-value per feature", "Two-sample KS p-value of each numeric input and output feature (side) in the last window.",
          [(f'vigil_drift_score{{{SEL}, method="ks_pvalue"}}', "{{model}} v{{version}} {{side}} {{feature}}")],
          8, 8, w=8, kind="table"),
    panel(5, "Jensen-Shannon per feature", "Jensen-Shannon distance of each input and output feature (side) in the last window.",
          [(f'vigil_drift_score{{{SEL}, method="js"}}', "{{model}} v{{version}} {{side}} {{feature}}")],
          16, 8, w=8, kind="table"),
    panel(6, "Window rows", "Rows in the open window.",
          [(f"vigil_drift_window_rows{{{SEL}}}", "{{model}} v{{version}}")], 0, 16),
    panel(7, "Windows by result", "Scored windows per second, ok vs drift.",
          [(f"sum by (model, version, result) ({rate('vigil_drift_windows_total')})", "{{model}} v{{version}} {{result}}")],
          12, 16),
    panel(8, "Retrain events", "Retrain events created per reason.",
          [('sum by (model, reason) (increase(vigil_retrain_events_total{model=~"$model"}[$__rate_interval]))', "{{model}} {{reason}}")],
          0, 24),
    panel(9, "Delivery outcomes", "Webhook delivery attempts per second, by outcome.",
          [('sum by (model, outcome) (rate(vigil_retrain_deliveries_total{model=~"$model"}[$__rate_interval]))', "{{model}} {{outcome}}")],
          12, 24),
    panel(10, "Outbox depth and dead letters", "Events waiting for delivery, and dead-lettered ones.",
          [('vigil_retrain_pending{model=~"$model"}', "pending {{model}}"),
           ('vigil_retrain_dead_letters{model=~"$model"}', "dead {{model}}")],
          0, 32),
    # Fleet: every replica's per-bin counters summed by Prometheus
    # (grafana/prometheus/vigil-fleet-rules.yml).
    {"id": 11, "type": "row", "title": "Fleet (all replicas)", "collapsed": False, "datasource": DS,
     "gridPos": {"x": 0, "y": 40, "w": 24, "h": 1}, "panels": [], "targets": []},
    panel(12, "Fleet PSI per feature (sliding window)",
          "PSI of the fleet's rows over the rules' window (10m) against the reference, per feature.",
          [(f"vigil:drift_psi_window:fleet{{{SEL}}}", "{{model}} v{{version}} {{side}} {{feature}}")], 0, 41),
    panel(13, "Fleet PSI and JS since start", "PSI and Jensen-Shannon distance of every row the fleet has counted.",
          [(f"vigil:drift_psi:fleet{{{SEL}}}", "psi {{model}} v{{version}} {{side}} {{feature}}"),
           (f"vigil:drift_js:fleet{{{SEL}}}", "js {{model}} v{{version}} {{side}} {{feature}}")],
          12, 41, kind="table"),
    panel(14, "Fleet drift share (sliding window)", "Share of a version's features with fleet PSI >= 0.2.",
          [(f"vigil:drift_share_window:fleet{{{SEL}}}", "{{model}} v{{version}}")], 0, 49, unit="percentunit"),
    panel(15, "VigilFleetDrift", "1 while the fleet drift alert fires for a version (0: not firing anywhere).",
          [('max by (model, version) (ALERTS{alertname="VigilFleetDrift", alertstate="firing", model=~"$model"})'
            ' or on() vector(0)', "{{model}} v{{version}}")], 12, 49, kind="stat"),
])

for name, d in (("vigil-overview.json", overview), ("vigil-drift.json", drift)):
    with open(os.path.join(HERE, "dashboards", name), "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
print("wrote", len(overview["panels"]), "+", len(drift["panels"]), "panels")
