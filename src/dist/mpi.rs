//! [`Collective`] on MPI through rsmpi (Debian's MPICH or Open MPI).

use super::Collective;
use anyhow::{Result, bail};
use mpi::datatype::Equivalence;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;

/// MPI's world. The universe finalizes MPI when dropped, at the end of the program.
///
/// The all-reduce sums in rank order (rank 0 gathers every buffer, adds them in order and
/// broadcasts the sum) rather than by `MPI_Allreduce`, whose order of additions depends
/// on the library, its version and the rank count. So a job's result does not depend on
/// the MPI it runs on, and N ranks add their gradients exactly as one process adds N
/// micro-batches (`--accumulate N`). The price is that rank 0 receives and sends every
/// rank's gradients: fine on one machine and a few nodes; a ring all-reduce in a fixed
/// order is what many nodes would need.
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    /// Every rank's buffer, on rank 0 (rsmpi has no in-place gather).
    gathered: Mutex<(Vec<f32>, Vec<f64>)>,
}

// SAFETY: MPI is initialized with `Threading::Serialized`: any thread may call it, one at
// a time. Training calls the collectives from one thread at a time: from the communication
// thread of `Background` where gradients go in buckets, else from the step (on a pool
// worker) or the rest of the loop (on the main thread), never both at once; the mutex
// serializes the all-reduces besides.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

/// Whether an MPI launcher started this process.
pub fn launched() -> bool {
    super::launched_by_mpi()
}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized) else {
            bail!("MPI is already initialized");
        };
        if threading < mpi::Threading::Serialized {
            bail!("this MPI library does not allow calls from more than one thread (MPI_THREAD_SERIALIZED)");
        }
        let world = universe.world();
        Ok(Mpi { _universe: universe, world, gathered: Mutex::new((Vec::new(), Vec::new())) })
    }

    /// Rank 0's sum, in rank order, of every rank's `buf`, left in every rank's `buf`.
    fn ordered_sum<T>(&self, buf: &mut [T], gathered: &mut Vec<T>)
    where
        T: Equivalence + Copy + Default + std::ops::AddAssign,
    {
        let root = self.world.process_at_rank(0);
        if self.world.rank() == 0 {
            gathered.clear();
            gathered.resize(buf.len() * self.size(), T::default());
            root.gather_into_root(&*buf, &mut gathered[..]);
            for part in gathered.chunks_exact(buf.len()).skip(1) {
                buf.iter_mut().zip(part).for_each(|(s, v)| *s += *v);
            }
        } else {
            root.gather_into(&*buf);
        }
        root.broadcast_into(buf);
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        if buf.is_empty() {
            return;
        }
        let mut gathered = self.gathered.lock().unwrap_or_else(|e| e.into_inner());
        self.ordered_sum(buf, &mut gathered.0);
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        if buf.is_empty() {
            return;
        }
        let mut gathered = self.gathered.lock().unwrap_or_else(|e| e.into_inner());
        self.ordered_sum(buf, &mut gathered.1);
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        format!("MPI, {} ranks", self.size())
    }
}
