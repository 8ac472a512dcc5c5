//! The drift decision over time: a version drifts after enough drifted windows in a row;
//! the moment it starts drifting is a [`DriftEvent`] for the retrain hook. Keeps the
//! last windows for the time line. Imports only this folder's reports.

use super::report::{WindowPoint, WindowReport, RECENT_WINDOWS};

/// A change of drift status, for whoever acts on it (the retrain hook).
#[derive(Clone, Debug)]
pub struct DriftEvent {
    pub model: String,
    pub version: u64,
    pub window: WindowReport,
}

/// A version's drift state: windows scored, drifted windows in a row, and the time line.
pub(super) struct Detector {
    pub(super) windows: u64,
    pub(super) in_row: u32,
    pub(super) drifting: bool,
    pub(super) last: Option<WindowReport>,
    pub(super) recent: std::collections::VecDeque<WindowPoint>,
}

impl Detector {
    pub(super) fn new() -> Detector {
        Detector {
            windows: 0,
            in_row: 0,
            drifting: false,
            last: None,
            recent: std::collections::VecDeque::with_capacity(RECENT_WINDOWS),
        }
    }

    /// Counts a scored window: a version drifts after `consecutive_windows` drifted
    /// windows in a row. True when this window starts a drift (it was not drifting).
    pub(super) fn record(&mut self, report: &WindowReport, consecutive_windows: u32) -> bool {
        self.windows += 1;
        self.in_row = if report.drifted { self.in_row + 1 } else { 0 };
        let was = self.drifting;
        self.drifting = self.in_row >= consecutive_windows;
        if self.recent.len() == RECENT_WINDOWS {
            self.recent.pop_front();
        }
        self.recent.push_back(WindowPoint {
            closed_at: report.closed_at,
            rows: report.rows,
            drift_share: report.drift_share,
            drifted: report.drifted,
        });
        self.last = Some(report.clone());
        self.drifting && !was
    }
}
