//! The canary judge: `[rollout.analysis]` walks a canary through its steps, judges each
//! step on that step's requests only, and promotes, holds or rolls back.
//!
//! - `probe`: the request path's side (one call per answered request, no allocation);
//! - `checks`: the statistics of one step (pure functions);
//! - this file: the state machine, its durable state and the timer that drives it.
//!
//! A decision changes the rollout through [`Server::set_rollout`], the path the API
//! uses. The state (`<state-dir>/analysis.json`, written then renamed) records a decided
//! promote/rollback as `pending` before applying it, so a crash in between applies it on
//! restart; a restart in the middle of a step resumes that step (its requests so far
//! were in memory: the step starts counting again). The timer runs on its own thread
//! under the supervisor, each model's pass under [`crate::supervise::guard`]: a panic in
//! the judge costs one pass for one model, never serving.

mod checks;
mod probe;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use checks::{ArmFigures, Check, CheckKind, ALPHA};
pub use probe::{Arm, Judged, Probe, StepData, LATENCY_SAMPLE, VALUE_SAMPLE};

use super::{ModelEntry, Server};
use crate::config::{AnalysisConfig, OnSuccess, RolloutMode};
use crate::metrics::CanaryFamilies;
use crate::retrain::{now_unix, rfc3339};

/// Records a routed request's answer (a no-op unless an analysis measures); in shadow
/// mode returns what the canary's copy is compared with.
pub fn answered<E>(
    route: &super::Route,
    latency: Duration,
    result: &Result<Vec<crate::tensor::Tensor>, E>,
) -> Option<ShadowJudge> {
    let judged = route.judged.as_ref()?;
    judged.record(latency, result);
    route.shadow.as_ref()?;
    Some(ShadowJudge {
        probe: judged.probe.clone(),
        stable: result.as_ref().ok().and_then(|o| o.first().cloned()),
    })
}

/// A shadow copy in flight: the stable answer it is compared with.
pub struct ShadowJudge {
    probe: Arc<Probe>,
    stable: Option<crate::tensor::Tensor>,
}

impl ShadowJudge {
    /// Records the canary's answer to the copy and compares it with the stable one.
    pub fn record<E>(self, latency: Duration, result: &Result<Vec<crate::tensor::Tensor>, E>) {
        let canary = Judged {
            probe: self.probe.clone(),
            arm: Arm::Canary,
        };
        canary.record(latency, result);
        if let (Some(s), Ok(outputs)) = (&self.stable, result) {
            if let Some(c) = outputs.first() {
                self.probe.compare(s, c);
            }
        }
    }
}

/// How often the judge looks at every model.
pub const TICK: Duration = Duration::from_millis(100);

/// Where an analysis is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Promoted,
    RolledBack,
    /// The last step passed with `on_success = "hold"`, or a step lacked traffic.
    Held,
    /// `"analysis": null`: the canary keeps its weight, unjudged.
    Stopped,
    /// The rollout was changed by hand (promote, rollback, another canary or stable).
    Ended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Promoted => "promoted",
            Status::RolledBack => "rolled_back",
            Status::Held => "held",
            Status::Stopped => "stopped",
            Status::Ended => "ended",
        }
    }
}

/// A decided change of the rollout, applied after it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Promote,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    InsufficientTraffic,
}

/// One judged step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based.
    pub step: usize,
    pub weight: u8,
    pub started_at: String,
    pub judged_at: String,
    pub verdict: Verdict,
    pub stable: ArmFigures,
    pub canary: ArmFigures,
    pub checks: Vec<Check>,
}

/// How an analysis ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub decision: Status,
    /// The check that failed (a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckKind>,
    pub reason: String,
    pub at: String,
}

/// One model's analysis, as persisted and as `GET .../rollout/analysis` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisState {
    pub stable: u64,
    pub canary: u64,
    pub mode: RolloutMode,
    pub config: AnalysisConfig,
    pub status: Status,
    /// 0-based index of the current step.
    pub step: usize,
    /// Unix seconds.
    pub started_at: f64,
    pub step_started_at: f64,
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub pending: Option<Action>,
    /// Restarts that resumed the current step.
    #[serde(default)]
    pub resumed: u32,
    /// A decision whose event is not in the retrain outbox yet: saved with the decision,
    /// sent after, cleared once the outbox holds it (its id is derived from the analysis
    /// and the step, so sending it again after a crash creates nothing new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Notice>,
}

/// A decision to announce through the retrain outbox (`vigil.canary.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `vigil.canary.step`, `.promoted`, `.rolled_back` or `.held`.
    pub kind: String,
    /// `step_passed`, `promoted`, `rolled_back` or `held`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    pub reason: String,
}

impl Notice {
    fn new(decision: &str, check: Option<&str>, reason: String) -> Notice {
        let kind = match decision {
            "step_passed" => "vigil.canary.step",
            "promoted" => "vigil.canary.promoted",
            "rolled_back" => "vigil.canary.rolled_back",
            _ => "vigil.canary.held",
        };
        Notice {
            kind: kind.to_string(),
            decision: decision.to_string(),
            check: check.map(str::to_string),
            reason,
        }
    }
}

impl AnalysisState {
    /// Steps of this analysis: the configured ones in split mode, one in shadow mode.
    pub fn step_count(&self) -> usize {
        match self.mode {
            RolloutMode::Split => self.config.steps.len(),
            RolloutMode::Shadow => 1,
        }
    }

    /// The canary weight of the current step (split mode).
    pub fn weight(&self) -> u8 {
        match self.mode {
            RolloutMode::Split => self.config.steps.get(self.step).copied().unwrap_or(0),
            RolloutMode::Shadow => 0,
        }
    }
}

/// The judge's memory: durable states, and when each running step's data began.
pub struct Judge {
    path: PathBuf,
    states: Mutex<BTreeMap<String, AnalysisState>>,
    /// When the probe began collecting the current step (not durable: the data is not).
    clocks: Mutex<HashMap<String, Instant>>,
    /// The stable arm of each model's last judged step: a 100% step has no stable
    /// traffic of its own and is compared with it (in memory; after a restart, the last
    /// step's record gives its counts).
    baselines: Mutex<HashMap<String, probe::ArmData>>,
    /// The states in memory differ from the file (a write failed): written again on
    /// every pass until it succeeds.
    dirty: std::sync::atomic::AtomicBool,
    metrics: CanaryFamilies,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Judge {
    /// Reads `<state_dir>/analysis.json`; an unreadable file is logged, moved aside and
    /// ignored.
    pub fn open(state_dir: &Path, metrics: CanaryFamilies) -> Judge {
        let path = state_dir.join("analysis.json");
        let states = crate::fsutil::read_state(&path, "canary analysis state");
        Judge {
            path,
            states: Mutex::new(states),
            clocks: Mutex::new(HashMap::new()),
            baselines: Mutex::new(HashMap::new()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// A model's analysis, if it has had one.
    pub fn state(&self, model: &str) -> Option<AnalysisState> {
        lock(&self.states).get(model).cloned()
    }

    /// Seconds the current step has been collecting requests (`None`: not running here).
    pub fn step_elapsed(&self, model: &str) -> Option<f64> {
        lock(&self.clocks)
            .get(model)
            .map(|t| t.elapsed().as_secs_f64())
    }

    /// Makes `state` the model's analysis and writes every analysis to disk. On a failed
    /// write the state is kept in memory all the same (a decision taken must act, above
    /// all a rollback), and every pass tries the write again until it succeeds.
    fn save(
        &self,
        states: &mut BTreeMap<String, AnalysisState>,
        model: &str,
        state: AnalysisState,
    ) -> std::io::Result<()> {
        states.insert(model.to_string(), state);
        self.persist(states)
    }

    fn persist(&self, states: &BTreeMap<String, AnalysisState>) -> std::io::Result<()> {
        let result = crate::fsutil::write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(states).expect("analysis state serialises"),
        );
        self.dirty
            .store(result.is_err(), std::sync::atomic::Ordering::Relaxed);
        result
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Starts the judge's timer: a supervised thread that stops when the server is dropped.
pub fn spawn(server: &Arc<Server>) {
    let weak: Weak<Server> = Arc::downgrade(server);
    crate::supervise::spawn_thread("canary_judge", "vigil-canary-judge", move || loop {
        std::thread::sleep(TICK);
        let Some(server) = weak.upgrade() else {
            return;
        };
        server.judge_tick();
    });
}

/// A model's analysis state, the current step's live (requests, failures) per arm
/// (stable, canary), and the live shadow agreement.
pub type LiveAnalysis = (AnalysisState, [(u64, u64); 2], Option<f64>);

impl Server {
    /// One pass over every model (the timer calls it; tests may too).
    pub fn judge_tick(&self) {
        let table = self.table.load_full();
        for (name, entry) in &table.models {
            let _ = crate::supervise::guard("canary_judge", || self.judge_model(name, entry));
        }
    }

    /// A model's analysis now, with the current step's live counts.
    pub fn analysis(&self, model: &str) -> Option<LiveAnalysis> {
        let state = self.judge.state(model)?;
        let counts = self
            .table
            .load()
            .models
            .get(model)
            .map_or([(0, 0); 2], |e| e.probe.counts());
        Some((state, counts, self.judge.step_elapsed(model)))
    }

    fn judge_model(&self, name: &str, entry: &Arc<ModelEntry>) {
        let judge = &self.judge;
        let mut states = lock(&judge.states);
        if judge.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            match judge.persist(&states) {
                Ok(()) => tracing::info!("the canary analysis state is written again"),
                Err(e) => {
                    tracing::debug!(error = %e, "the canary analysis state still cannot be written")
                }
            }
        }
        let state = states.get(name).cloned();
        if let Some(mut st) = state.clone() {
            if st.notice.is_some() {
                self.announce(&mut states, name, &mut st);
            }
            if let Some(action) = st.pending {
                if self.apply(name, &st, action) {
                    st.pending = None;
                    if let Err(e) = judge.save(&mut states, name, st) {
                        tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
                    }
                }
                return;
            }
            if st.status == Status::Running {
                let cfg = entry.rollout.analysis.clone();
                let ended = if entry.rollout.canary != Some(st.canary)
                    || entry.stable != Some(st.stable)
                    || entry.rollout.mode != st.mode
                {
                    Some((
                        Status::Ended,
                        if entry.stable == Some(st.canary) {
                            "the canary was promoted by hand"
                        } else if entry.rollout.canary.is_none() {
                            "the canary was rolled back by hand"
                        } else {
                            "the rollout's versions or mode were changed by hand"
                        },
                    ))
                } else if cfg.is_none() {
                    Some((
                        Status::Stopped,
                        "the analysis was removed (\"analysis\": null)",
                    ))
                } else if cfg.as_ref() != Some(&st.config) {
                    Some((
                        Status::Ended,
                        "the analysis settings changed; a new analysis starts",
                    ))
                } else {
                    None
                };
                if let Some((status, reason)) = ended {
                    entry.probe.restart(false, 0);
                    lock(&judge.clocks).remove(name);
                    st.status = status;
                    st.decision = Some(Decision {
                        decision: status,
                        check: None,
                        reason: reason.to_string(),
                        at: rfc3339(now_unix()),
                    });
                    self.finish_metrics(name, &st);
                    tracing::info!(
                        model = name,
                        canary = st.canary,
                        reason,
                        "canary analysis ended"
                    );
                    if let Err(e) = judge.save(&mut states, name, st) {
                        tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
                    }
                    return;
                }
                if entry.canary.is_none() {
                    // The canary is not loaded (yet): the step waits.
                    return;
                }
                self.advance(&mut states, name, entry, st);
                return;
            }
        }
        // Nothing running: start one when the rollout asks for it.
        let (Some(cfg), Some(canary), Some(stable)) =
            (entry.rollout.analysis.clone(), entry.canary, entry.stable)
        else {
            return;
        };
        if let Some(st) = &state {
            if st.status == Status::Held
                && (st.stable, st.canary, st.mode) == (stable, canary, entry.rollout.mode)
                && st.config == cfg
            {
                return;
            }
        }
        let now = now_unix();
        let st = AnalysisState {
            stable,
            canary,
            mode: entry.rollout.mode,
            config: cfg,
            status: Status::Running,
            step: 0,
            started_at: now,
            step_started_at: now,
            steps: Vec::new(),
            decision: None,
            pending: None,
            resumed: 0,
            notice: None,
        };
        let before = states.get(name).cloned();
        if let Err(e) = judge.save(&mut states, name, st.clone()) {
            tracing::error!(model = name, error = %e, "cannot persist the canary analysis; not started");
            match before {
                Some(b) => states.insert(name.to_string(), b),
                None => states.remove(name),
            };
            return;
        }
        lock(&judge.baselines).remove(name);
        self.export_decisions(name);
        tracing::info!(model = name, stable, canary, "canary analysis started");
        self.begin_step(name, entry, &st);
    }

    /// Sets the step's weight (and pins stable), then starts collecting.
    fn begin_step(&self, name: &str, entry: &ModelEntry, st: &AnalysisState) {
        let (stable, weight, mode) = (st.stable, st.weight(), st.mode);
        let changed = self.set_rollout(name, |e| {
            let mut next = e.rollout.clone();
            next.stable = Some(stable);
            if mode == RolloutMode::Split {
                next.weight = weight;
            }
            Ok(next)
        });
        if let Err(e) = changed {
            tracing::error!(model = name, error = %e, "cannot set the canary step's weight");
        }
        entry.probe.restart(true, seed());
        lock(&self.judge.clocks).insert(name.to_string(), Instant::now());
        self.judge
            .metrics
            .step
            .with_label_values(&[name])
            .set(st.step as i64 + 1);
    }

    fn advance(
        &self,
        states: &mut BTreeMap<String, AnalysisState>,
        name: &str,
        entry: &ModelEntry,
        mut st: AnalysisState,
    ) {
        let judge = &self.judge;
        let cfg = st.config.clone();
        let began = lock(&judge.clocks).get(name).copied();
        let Some(began) = began.filter(|_| entry.probe.is_active()) else {
            // After a restart: the step goes on, counting from now.
            st.resumed += 1;
            tracing::info!(
                model = name,
                step = st.step + 1,
                "resuming the canary analysis"
            );
            if let Err(e) = judge.save(states, name, st.clone()) {
                tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
            }
            self.begin_step(name, entry, &st);
            return;
        };
        if st.mode == RolloutMode::Shadow {
            let s = entry.probe.shadow();
            let compared = s.label_rows + s.mismatched;
            if compared > 0 {
                judge
                    .metrics
                    .agreement
                    .with_label_values(&[name, &st.canary.to_string()])
                    .set(s.agreed as f64 / compared as f64);
            }
        }
        let [(sn, _), (cn, _)] = entry.probe.counts();
        // A 100% step: only the canary serves; its stable side is the last step's.
        let full = st.mode == RolloutMode::Split && st.weight() >= 100;
        let enough = cn >= cfg.min_requests && (full || sn >= cfg.min_requests);
        let now = now_unix();
        let record = |data: &StepData, verdict, checks| StepRecord {
            step: st.step + 1,
            weight: st.weight(),
            started_at: rfc3339(st.step_started_at),
            judged_at: rfc3339(now),
            verdict,
            stable: checks::figures(&data.stable),
            canary: checks::figures(&data.canary),
            checks,
        };
        if !enough {
            if now - st.step_started_at >= cfg.max_wait().as_secs_f64() {
                let data = entry.probe.restart(false, 0);
                lock(&judge.clocks).remove(name);
                st.steps
                    .push(record(&data, Verdict::InsufficientTraffic, Vec::new()));
                st.status = Status::Held;
                st.decision = Some(Decision {
                    decision: Status::Held,
                    check: None,
                    reason: format!(
                        "step {} had {sn} stable and {cn} canary requests after {}, fewer than \
                         min_requests = {}: the canary holds at {}%",
                        st.step + 1,
                        humantime::format_duration(cfg.max_wait()),
                        cfg.min_requests,
                        st.weight()
                    ),
                    at: rfc3339(now),
                });
                self.count_decision(name, "held", "traffic");
                self.finish_metrics(name, &st);
                let reason = st
                    .decision
                    .as_ref()
                    .map_or(String::new(), |d| d.reason.clone());
                st.notice = Some(Notice::new("held", Some("traffic"), reason));
                if let Err(e) = judge.save(states, name, st.clone()) {
                    tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
                }
                self.announce(states, name, &mut st);
            }
            return;
        }
        if began.elapsed() < cfg.interval() {
            return;
        }
        let last = st.step + 1 >= st.step_count();
        let mut data = entry.probe.restart(!last, seed());
        // A 100% step is compared with the previous step's stable arm (stable requests
        // answered just after the switch are stragglers of that step, too few to judge
        // with). A shadow copy runs after the stable answer, beside the next request.
        // Either way the latencies were not measured side by side: shown, not judged.
        // After a restart only the previous step's record is left of it: its counts.
        if full {
            if let Some(b) = lock(&judge.baselines).remove(name) {
                data.stable = b;
            } else if let Some(prev) = st.steps.last().filter(|r| r.verdict == Verdict::Passed) {
                data.stable = probe::ArmData::from_counts(prev.stable.requests, prev.stable.errors);
            }
        }
        let concurrent = !full && st.mode == RolloutMode::Split;
        let shadow = (st.mode == RolloutMode::Shadow).then_some(&data.shadow);
        let checks = checks::judge(&cfg, &data.stable, &data.canary, shadow, concurrent, !full);
        let failed = checks.iter().find(|c| !c.passed).cloned();
        let verdict = if failed.is_some() {
            Verdict::Failed
        } else {
            Verdict::Passed
        };
        st.steps.push(record(&data, verdict, checks));
        if !full {
            lock(&judge.baselines).insert(name.to_string(), data.stable);
        }
        if let Some(f) = failed {
            entry.probe.restart(false, 0);
            lock(&judge.clocks).remove(name);
            let p = f.pvalue.map_or(String::new(), |p| format!(", p = {p:.3e}"));
            let value = f.value.map_or("n/a".into(), |v| format!("{v:.4}"));
            st.status = Status::RolledBack;
            st.pending = Some(Action::Rollback);
            st.decision = Some(Decision {
                decision: Status::RolledBack,
                check: Some(f.check),
                reason: format!(
                    "step {} ({}%) failed the {} check: {value} against {}{p} ({})",
                    st.step + 1,
                    st.weight(),
                    f.check.as_str(),
                    f.threshold,
                    f.detail
                ),
                at: rfc3339(now),
            });
            self.count_decision(name, "rolled_back", f.check.as_str());
            let reason = st
                .decision
                .as_ref()
                .map_or(String::new(), |d| d.reason.clone());
            st.notice = Some(Notice::new("rolled_back", Some(f.check.as_str()), reason));
            tracing::warn!(model = name, canary = st.canary, reason = %st.decision.as_ref().map_or("", |d| d.reason.as_str()), "canary rolled back");
        } else if last {
            lock(&judge.clocks).remove(name);
            let (status, action, label) = match cfg.on_success {
                OnSuccess::Promote => (Status::Promoted, Some(Action::Promote), "promoted"),
                OnSuccess::Hold => (Status::Held, None, "held"),
            };
            st.status = status;
            st.pending = action;
            st.decision = Some(Decision {
                decision: status,
                check: None,
                reason: format!(
                    "all {} steps passed; on_success = \"{}\"",
                    st.step_count(),
                    if action.is_some() { "promote" } else { "hold" }
                ),
                at: rfc3339(now),
            });
            self.count_decision(name, label, "none");
            let reason = st
                .decision
                .as_ref()
                .map_or(String::new(), |d| d.reason.clone());
            st.notice = Some(Notice::new(label, None, reason));
            tracing::info!(
                model = name,
                canary = st.canary,
                decision = label,
                "canary analysis passed"
            );
        } else {
            self.count_decision(name, "step_passed", "none");
            st.notice = Some(Notice::new(
                "step_passed",
                None,
                format!(
                    "step {} ({}%) passed every check; next: step {} ({}%)",
                    st.step + 1,
                    st.weight(),
                    st.step + 2,
                    st.config.steps.get(st.step + 1).copied().unwrap_or(0)
                ),
            ));
            st.step += 1;
            st.step_started_at = now;
            if let Err(e) = judge.save(states, name, st.clone()) {
                tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
            } else {
                self.announce(states, name, &mut st);
            }
            tracing::info!(
                model = name,
                step = st.step + 1,
                weight = st.weight(),
                "canary step passed; next step"
            );
            self.begin_step(name, entry, &st);
            return;
        }
        if st.status != Status::Running {
            self.finish_metrics(name, &st);
        }
        if let Err(e) = judge.save(states, name, st.clone()) {
            // Applied all the same: a rollback must not wait for a disk (the rollout's own
            // store records it); the analysis is written once the disk takes it.
            tracing::error!(model = name, error = %e, "cannot persist the canary decision; applying it");
        }
        self.announce(states, name, &mut st);
        if let Some(action) = st.pending {
            if self.apply(name, &st, action) {
                st.pending = None;
                if let Err(e) = judge.save(states, name, st) {
                    tracing::error!(model = name, error = %e, "cannot persist the canary analysis");
                }
            }
        }
    }

    /// Applies a decision to the rollout; `true` when nothing is left to do.
    fn apply(&self, name: &str, st: &AnalysisState, action: Action) -> bool {
        let (stable, canary) = (st.stable, st.canary);
        let result = self.set_rollout(name, |e| {
            let mut next = e.rollout.clone();
            if next.canary != Some(canary) {
                // Changed by hand meanwhile: nothing to apply.
                return Ok(next);
            }
            next.stable = Some(match action {
                Action::Promote => canary,
                Action::Rollback => stable,
            });
            next.canary = None;
            next.weight = 0;
            Ok(next)
        });
        match result {
            Ok(_) => true,
            Err(super::RolloutError::Persist(e)) => {
                tracing::error!(model = name, error = %e, "cannot apply the canary decision yet");
                false
            }
            Err(e) => {
                // A registry owns the versions (MLflow aliases): take the canary's traffic
                // away at once, and move the roles in the registry if allowed to.
                if action == Action::Rollback {
                    let _ = self.set_rollout(name, |e| {
                        let mut next = e.rollout.clone();
                        if next.weight == 0 {
                            return Err("unchanged".into());
                        }
                        next.weight = 0;
                        Ok(next)
                    });
                }
                let Some(writer) = self.role_writer.get() else {
                    tracing::error!(model = name, error = %e, "cannot move the canary (its registry owns the roles; --mlflow-write-aliases lets vigil move them)");
                    return true;
                };
                writer.write(
                    name,
                    match action {
                        Action::Promote => super::RoleChange::Promote(canary),
                        Action::Rollback => super::RoleChange::Rollback(canary),
                    },
                )
            }
        }
    }

    /// Puts the state's unsent notice into the retrain outbox, then clears it.
    fn announce(
        &self,
        states: &mut BTreeMap<String, AnalysisState>,
        name: &str,
        st: &mut AnalysisState,
    ) {
        let Some(notice) = st.notice.clone() else {
            return;
        };
        let Some(record) = st.steps.last() else {
            st.notice = None;
            return;
        };
        let info = crate::retrain::CanaryInfo {
            stable_version: st.stable.to_string(),
            canary_version: st.canary.to_string(),
            mode: st.mode.as_str().to_string(),
            decision: notice.decision.clone(),
            step: record.step,
            steps: st.step_count(),
            weight: record.weight,
            check: notice.check.clone(),
            figures: serde_json::to_value(record).unwrap_or_default(),
        };
        match self
            .retrainer
            .canary_decision(&notice.kind, name, st.started_at, notice.reason, info)
        {
            Ok(_) => {
                st.notice = None;
                if let Err(e) = self.judge.save(states, name, st.clone()) {
                    // The notice stays: the next pass sends it again, which creates nothing.
                    tracing::warn!(model = name, error = %e, "cannot persist the canary analysis");
                }
            }
            Err(e) => {
                tracing::error!(model = name, error = %e, "cannot create the canary decision's event; retried on the next pass");
            }
        }
    }

    /// Every decision's series at its count (0 if new): a series born at 1 is invisible
    /// to `increase()`, so an alert on the first rollback ever would not fire.
    fn export_decisions(&self, name: &str) {
        let checks = [
            CheckKind::Errors,
            CheckKind::Latency,
            CheckKind::OutputPsi,
            CheckKind::Agreement,
        ];
        let all = [
            ("step_passed", "none"),
            ("promoted", "none"),
            ("held", "none"),
        ]
        .into_iter()
        .chain([("held", "traffic")])
        .chain(checks.iter().map(|c| ("rolled_back", c.as_str())));
        for (decision, check) in all {
            self.judge
                .metrics
                .decisions
                .with_label_values(&[name, decision, check]);
        }
    }

    fn count_decision(&self, name: &str, decision: &str, check: &str) {
        self.judge
            .metrics
            .decisions
            .with_label_values(&[name, decision, check])
            .inc();
    }

    /// Gauges back to idle when an analysis ends.
    fn finish_metrics(&self, name: &str, st: &AnalysisState) {
        let m = &self.judge.metrics;
        m.step.with_label_values(&[name]).set(0);
        let _ = m
            .agreement
            .remove_label_values(&[name, &st.canary.to_string()]);
    }
}
