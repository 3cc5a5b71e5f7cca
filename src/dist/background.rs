//! A [`Collective`] whose operations run on a thread of their own, one after another in
//! the order they were asked for, so that an all-reduce started during the backward pass
//! ([`Collective::start_all_reduce_sum`]) overlaps the computation that follows it. Every
//! collective operation goes through that thread (MPI then has one caller, and the ranks'
//! operations stay in the same order); the blocking ones wait for it. Only `abort` (which
//! ends the process) and `describe` (no communication) run where they are called.

use super::{Collective, Pending};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&dyn Collective) + Send>;

pub struct Background {
    inner: Arc<dyn Collective>,
    /// Asked before the thread starts: rank and size are MPI calls too.
    rank: usize,
    size: usize,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn new(inner: Arc<dyn Collective>) -> Background {
        let (rank, size) = (inner.rank(), inner.size());
        let (jobs, queue) = channel::<Job>();
        let on_thread = inner.clone();
        let thread = std::thread::Builder::new()
            .name("collectives".into())
            .spawn(move || {
                for job in queue {
                    job(&*on_thread);
                }
            })
            .expect("cannot start the communication thread");
        Background { inner, rank, size, jobs: Mutex::new(Some(jobs)), thread: Some(thread) }
    }

    /// Queues `op`; its result comes back through the receiver.
    fn queue<R: Send + 'static>(&self, op: impl FnOnce(&dyn Collective) -> R + Send + 'static) -> Receiver<R> {
        let (reply, result) = channel();
        let job: Job = Box::new(move |c| {
            let _ = reply.send(op(c));
        });
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.as_ref().expect("running").send(job).expect("the communication thread ended");
        result
    }

    /// Runs `op` on a copy of `buf` on the thread, after everything queued before it.
    fn blocking<T: Copy + Send + 'static>(&self, buf: &mut [T], op: fn(&dyn Collective, &mut [T])) {
        let mut copy = buf.to_vec();
        let done = self.queue(move |c| {
            op(c, &mut copy);
            copy
        });
        buf.copy_from_slice(&done.recv().expect("the communication thread ended"));
    }
}

impl Collective for Background {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        self.blocking(buf, |c, b| c.all_reduce_sum(b));
    }
    fn start_all_reduce_sum(&self, mut buf: Vec<f32>) -> Pending {
        Pending::Running(self.queue(move |c| {
            c.all_reduce_sum(&mut buf);
            buf
        }))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        self.blocking(buf, |c, b| c.all_reduce_sum_f64(b));
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) {
        let mut copy = buf.to_vec();
        let done = self.queue(move |c| {
            c.broadcast(&mut copy, root);
            copy
        });
        buf.copy_from_slice(&done.recv().expect("the communication thread ended"));
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl Drop for Background {
    /// Lets the queued operations finish and the thread end, before the wrapped collective
    /// (MPI's finalization) can go.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the order of its operations and adds 1 to every sum (a second rank of ones).
    struct Recorder(Mutex<Vec<&'static str>>);

    impl Collective for Recorder {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.0.lock().unwrap().push("f32");
            buf.iter_mut().for_each(|v| *v += 1.0);
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
            self.0.lock().unwrap().push("f64");
            buf.iter_mut().for_each(|v| *v += 1.0);
        }
        fn broadcast(&self, _: &mut [f32], _: usize) {
            self.0.lock().unwrap().push("broadcast");
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    #[test]
    fn operations_run_in_the_order_asked_and_started_ones_return_at_once() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let background = Background::new(recorder.clone());
        let first = background.start_all_reduce_sum(vec![1.0, 2.0]);
        let second = background.start_all_reduce_sum(vec![3.0]);
        let mut counts = [5.0f64];
        background.all_reduce_sum_f64(&mut counts);
        let mut values = [0f32; 2];
        background.broadcast(&mut values, 0);
        assert_eq!(counts, [6.0]);
        assert_eq!(first.wait(), [2.0, 3.0]);
        assert_eq!(second.wait(), [4.0]);
        assert_eq!((background.rank(), background.size()), (0, 2));
        drop(background);
        assert_eq!(*recorder.0.lock().unwrap(), ["f32", "f32", "f64", "broadcast"]);
    }
}
