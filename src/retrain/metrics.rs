//! The hook's counters as Prometheus series: [`RetrainMetrics`] over the families that
//! `crate::metrics` registers (which never imports the hook).

use std::collections::HashMap;

use super::RetrainMetrics;
use crate::metrics::RetrainCounters;

impl RetrainMetrics for RetrainCounters {
    fn event(&self, model: &str, reason: &str) {
        self.events.with_label_values(&[model, reason]).inc();
    }
    fn delivery(&self, model: &str, outcome: &str) {
        self.deliveries.with_label_values(&[model, outcome]).inc();
    }
    fn gauges(&self, pending: &HashMap<String, i64>, dead: &HashMap<String, i64>) {
        for (m, n) in pending {
            self.pending.with_label_values(&[m]).set(*n);
        }
        for (m, n) in dead {
            self.dead.with_label_values(&[m]).set(*n);
        }
    }
}
