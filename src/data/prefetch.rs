//! Ordered parallel prefetch: items `start..end` are made by worker threads (item `i` by
//! worker `i % workers`, each a bounded queue ahead) and handed out in order. Used for
//! batches and for multi-scale test views, so decoding runs beside the engine.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// How many items each worker may finish ahead of the consumer.
const AHEAD: usize = 2;

pub struct Prefetch<T> {
    receivers: Vec<Receiver<T>>,
    workers: Vec<JoinHandle<()>>,
    start: usize,
    next: usize,
    end: usize,
}

impl<T: Send + 'static> Prefetch<T> {
    pub fn new(start: usize, end: usize, workers: usize, make: impl Fn(usize) -> T + Send + Sync + 'static) -> Self {
        let workers = workers.max(1);
        let make = Arc::new(make);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(AHEAD);
            let make = make.clone();
            handles.push(std::thread::spawn(move || {
                let mut i = start + w;
                while i < end {
                    if tx.send(make(i)).is_err() {
                        return; // the consumer stopped early
                    }
                    i += workers;
                }
            }));
            receivers.push(rx);
        }
        Prefetch { receivers, workers: handles, start, next: start, end }
    }

    /// Index of the item the next call returns.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.next >= self.end {
            return None;
        }
        let w = (self.next - self.start) % self.receivers.len();
        self.next += 1;
        self.receivers[w].recv().ok()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
