//! The learning-rate schedule: step drops at milestones, plus the paper's warm-up for
//! very deep nets (lr 0.01 until the training error falls below 80%, §4.2).

use std::collections::VecDeque;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub lr: f32,
    /// Iterations at which the learning rate is divided by 10.
    pub milestones: Vec<usize>,
    /// Warm-up learning rate, if warm-up is enabled.
    pub warmup_lr: Option<f32>,
    /// Warm-up ends once the training error over the recent window is below this.
    pub warmup_until_error: f32,
}

/// Iterations over which the warm-up exit condition is measured.
const WARMUP_WINDOW: usize = 20;

impl Schedule {
    pub fn lr_at(&self, iteration: usize, warming_up: bool) -> f32 {
        if warming_up && let Some(w) = self.warmup_lr {
            return w;
        }
        let drops = self.milestones.iter().filter(|&&m| iteration >= m).count();
        // In f64, so 0.1 / 10 prints as 0.01, not 0.010000001.
        (self.lr as f64 * 0.1f64.powi(drops as i32)) as f32
    }
}

/// Tracks the warm-up exit condition.
pub struct Warmup {
    pub done: bool,
    recent: VecDeque<f32>,
}

impl Warmup {
    /// `recent`: the window as a checkpoint saved it (see [`Warmup::window`]).
    pub fn new(enabled: bool, done: bool, recent: &[f32]) -> Self {
        let mut window = VecDeque::with_capacity(WARMUP_WINDOW);
        window.extend(recent.iter().rev().take(WARMUP_WINDOW).rev());
        Warmup { done: done || !enabled, recent: window }
    }
    /// The training errors of the window's steps, oldest first: part of the run's state,
    /// so that a run resumed during warm-up ends it at the same step.
    pub fn window(&self) -> impl Iterator<Item = f32> + '_ {
        self.recent.iter().copied()
    }
    /// Records one step's training error; returns true when warm-up just ended.
    pub fn record(&mut self, error: f32, threshold: f32) -> bool {
        if self.done {
            return false;
        }
        if self.recent.len() == WARMUP_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(error);
        let mean = self.recent.iter().sum::<f32>() / self.recent.len() as f32;
        if self.recent.len() == WARMUP_WINDOW && mean < threshold {
            self.done = true;
            self.recent.clear();
        }
        self.done
    }
}
