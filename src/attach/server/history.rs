//! What the hub keeps of a run for the snapshots it gives new clients:
//! every event but steps (notes capped), the recent steps whole and older
//! ones evenly thinned, and the run's state.
use crate::attach::{RunState, Snapshot, Stamped, PROTOCOL, SNAPSHOT_STEPS};
use crate::control::Event;
use std::collections::VecDeque;

/// Checkpoint, pause, lr-change and log events kept for snapshots.
const NOTES: usize = 500;

/// Step events: the newest `SNAPSHOT_STEPS` in full, and every `stride`-th
/// older one (the stride doubles as they pile up).
#[derive(Default)]
pub(super) struct Steps {
    pub(super) recent: VecDeque<(u64, Stamped)>,
    pub(super) old: Vec<(u64, Stamped)>,
    pub(super) stride: u64,
    aged: u64,
}

impl Steps {
    pub(super) fn push(&mut self, item: (u64, Stamped)) {
        self.recent.push_back(item);
        if self.recent.len() <= SNAPSHOT_STEPS {
            return;
        }
        let out = self.recent.pop_front().expect("more than SNAPSHOT_STEPS");
        if self.aged.is_multiple_of(self.stride.max(1)) {
            self.old.push(out);
        }
        self.aged += 1;
        if self.old.len() >= 2 * SNAPSHOT_STEPS {
            let mut keep = false;
            self.old.retain(|_| {
                keep = !keep;
                keep
            });
            self.stride = self.stride.max(1) * 2;
        }
    }
}

/// The run as the hub has seen it.
pub(super) struct History {
    config: String,
    run_state: RunState,
    seq: u64,
    /// Every event but steps, in order (notes capped at `NOTES`).
    events: Vec<(u64, Stamped)>,
    notes: usize,
    steps: Steps,
}

/// Events that are neither the run's shape nor its results (a client can
/// cause any number of them).
fn is_note(e: &Event) -> bool {
    !matches!(
        e,
        Event::Started(_) | Event::Epoch(_) | Event::Finished { .. } | Event::Failed { .. }
    )
}

impl History {
    /// A run of this configuration (TOML) that has not started.
    pub(super) fn new(config: String) -> History {
        History {
            config,
            run_state: RunState::Starting,
            seq: 0,
            events: Vec::new(),
            notes: 0,
            steps: Steps::default(),
        }
    }

    pub(super) fn record(&mut self, time: f64, event: &Event) {
        self.seq += 1;
        self.run_state = match event {
            Event::Started(_) | Event::Step { .. } if self.run_state == RunState::Starting => RunState::Running,
            Event::Paused => RunState::Paused,
            Event::Resumed => RunState::Running,
            Event::Finished { .. } => RunState::Finished,
            Event::Failed { .. } => RunState::Failed,
            _ => self.run_state,
        };
        let item = (
            self.seq,
            Stamped {
                time,
                event: event.clone(),
            },
        );
        match event {
            Event::Step { .. } => return self.steps.push(item),
            // Only the newest epoch keeps its confusion matrix.
            Event::Epoch(_) => {
                if let Some((
                    _,
                    Stamped {
                        event: Event::Epoch(prev),
                        ..
                    },
                )) = self
                    .events
                    .iter_mut()
                    .rev()
                    .find(|(_, s)| matches!(s.event, Event::Epoch(_)))
                {
                    prev.val.confusion.clear();
                }
            }
            e if is_note(e) => {
                self.notes += 1;
                if self.notes > NOTES {
                    if let Some(i) = self.events.iter().position(|(_, s)| is_note(&s.event)) {
                        self.events.remove(i);
                        self.notes -= 1;
                    }
                }
            }
            _ => {}
        }
        self.events.push(item);
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut events: Vec<&(u64, Stamped)> = self
            .events
            .iter()
            .chain(&self.steps.old)
            .chain(&self.steps.recent)
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        Snapshot {
            protocol: PROTOCOL,
            pid: std::process::id(),
            state: self.run_state,
            config: self.config.clone(),
            info: self.events.iter().find_map(|(_, s)| match &s.event {
                Event::Started(info) => Some(info.clone()),
                _ => None,
            }),
            events: events.into_iter().map(|(_, s)| s.clone()).collect(),
        }
    }
}
