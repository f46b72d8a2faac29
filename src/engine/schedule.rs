//! The paper's learning-rate schedule: divide by 10 when validation accuracy
//! stops improving, at most 3 times; stop when it stalls after the last.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub factor: f64,
    pub max_decays: u32,
    pub patience: u32,
    pub manual_counts: bool,
    pub decays_used: u32,
    /// Best validation top-1 so far (-1 before the first epoch).
    pub best: f64,
    pub since_best: u32,
    /// The schedule ended the run (accuracy stalled after the last decay):
    /// a resume trains no further.
    #[serde(default)]
    pub stopped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Continue,
    /// The lr was divided: (old, new).
    Decay(f64, f64),
    /// Accuracy stopped improving after the last decay.
    Stop,
}

impl Schedule {
    pub fn new(cfg: &crate::config::TrainConfig) -> Schedule {
        Schedule {
            lr: cfg.lr,
            factor: cfg.lr_decay_factor,
            max_decays: cfg.max_decays,
            patience: cfg.patience,
            manual_counts: cfg.manual_decays_count,
            decays_used: 0,
            best: -1.0,
            since_best: 0,
            stopped: false,
        }
    }

    /// This saved schedule under `settings`' factor, max-decays, patience
    /// and manual counting (a resume's): a stop stands only while no decay
    /// is left to make.
    pub fn with_settings(self, settings: &Schedule) -> Schedule {
        Schedule {
            factor: settings.factor,
            max_decays: settings.max_decays,
            patience: settings.patience,
            manual_counts: settings.manual_counts,
            stopped: self.stopped && self.decays_used >= settings.max_decays,
            ..self
        }
    }

    /// Whether `acc` is a new best (before `on_epoch` records it).
    pub fn is_best(&self, acc: f64) -> bool {
        acc > self.best
    }

    /// Records an epoch's validation top-1 and decides.
    pub fn on_epoch(&mut self, acc: f64) -> Decision {
        if self.is_best(acc) {
            self.best = acc;
            self.since_best = 0;
            return Decision::Continue;
        }
        self.since_best += 1;
        if self.since_best < self.patience {
            return Decision::Continue;
        }
        self.since_best = 0;
        if self.decays_used >= self.max_decays {
            self.stopped = true;
            return Decision::Stop;
        }
        self.decays_used += 1;
        let old = self.lr;
        self.lr /= self.factor;
        Decision::Decay(old, self.lr)
    }

    /// The user's decay: (old, new).
    pub fn manual_decay(&mut self) -> (f64, f64) {
        let old = self.lr;
        self.lr /= self.factor;
        if self.manual_counts {
            self.decays_used += 1;
        }
        self.since_best = 0;
        (old, self.lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(patience: u32, manual_counts: bool) -> Schedule {
        let cfg = crate::config::TrainConfig {
            patience,
            manual_decays_count: manual_counts,
            ..Default::default()
        };
        Schedule::new(&cfg)
    }

    #[test]
    fn decays_after_patience_epochs_without_improvement_then_stops() {
        let mut s = schedule(2, true);
        let accs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.69, 0.71, 0.7, 0.7, 0.7, 0.7];
        let decisions: Vec<Decision> = accs.iter().map(|&a| s.on_epoch(a)).collect();
        let d = |old: f64| Decision::Decay(old, old / 10.0);
        use Decision::Continue as C;
        assert_eq!(
            decisions,
            vec![C, C, C, d(1e-2), C, C, d(1e-3), C, C, C, d(1e-4), C, Decision::Stop]
        );
        assert_eq!(s.decays_used, 3);
        assert!((s.lr - 1e-5).abs() < 1e-12);
        assert_eq!(s.best, 0.71);
    }

    #[test]
    fn manual_decays_count_only_when_configured() {
        let mut counted = schedule(1, true);
        assert_eq!(counted.manual_decay(), (1e-2, 1e-3));
        assert_eq!(counted.decays_used, 1);
        let mut free = schedule(1, false);
        free.manual_decay();
        assert_eq!(free.decays_used, 0);
        assert!((free.lr - 1e-3).abs() < 1e-15);
    }
}
