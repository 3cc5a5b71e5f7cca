//! [`Collective`] on MPI through rsmpi (Debian's MPICH or Open MPI).

use super::Collective;
use anyhow::{Result, bail};
use mpi::datatype::Equivalence;
use mpi::request::WaitGuard;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;

/// MPI's world. The universe finalizes MPI when dropped, at the end of the program.
///
/// The all-reduce adds in rank order, `(g0 + g1) + g2 …`, rather than by `MPI_Allreduce`,
/// whose order of additions depends on the library, its version and the rank count. So a
/// job's result does not depend on the MPI it runs on, and N ranks add their gradients
/// exactly as one process adds N micro-batches (`--accumulate N`). It is a pipelined chain
/// ([`Mpi::chain_sum`]): chunks of the buffer pass from rank 0 up to the last rank, each
/// rank adding its values, and the sums pass back down. Each rank sends and receives the
/// buffer twice whatever the number of ranks, as a ring all-reduce does, and no rank
/// carries more than the others.
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    /// Room for the chunk being received.
    incoming: Mutex<(Vec<f32>, Vec<f64>)>,
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

/// Values per message of the chain for `len` values of `bytes` each on `ranks` ranks: about
/// a quarter of the buffer over the ranks' links, so that the chain fills up within a
/// quarter of the transfer, but no less than 16 KiB, where a message's latency would weigh
/// as much as its transfer, and no more than 1 MiB. (`tools/scaling_projection.py` models
/// it on many nodes.)
fn chunk_values(len: usize, bytes: usize, ranks: usize) -> usize {
    let quarter = len * bytes / (4 * ranks.saturating_sub(1).max(1));
    (quarter.clamp(16 << 10, 1 << 20) / bytes).clamp(1, len.max(1))
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
        Ok(Mpi { _universe: universe, world, incoming: Mutex::new((Vec::new(), Vec::new())) })
    }

    /// The sum over the ranks, in rank order, of every rank's `buf`, left in every rank's
    /// `buf`. Up the chain, rank r receives a chunk of the sums of ranks 0..r, adds its own
    /// values and sends the chunk on while it receives the next; the last rank then holds
    /// the sums, and they come down the chain chunk by chunk the same way.
    fn chain_sum<T>(&self, buf: &mut [T], incoming: &mut Vec<T>)
    where
        T: Equivalence + Copy + Default + std::ops::Add<Output = T>,
    {
        let (rank, size) = (self.world.rank(), self.world.size());
        if size == 1 || buf.is_empty() {
            return;
        }
        let chunk = chunk_values(buf.len(), std::mem::size_of::<T>(), size as usize);
        let below = (rank > 0).then(|| self.world.process_at_rank(rank - 1));
        let above = (rank + 1 < size).then(|| self.world.process_at_rank(rank + 1));
        incoming.resize(chunk, T::default());
        // Up. (The buffers of non-blocking sends must outlive the scope: cut them first.)
        let chunks: Vec<&mut [T]> = buf.chunks_mut(chunk).collect();
        mpi::request::scope(|scope| {
            let mut sends = Vec::new();
            for part in chunks {
                if let Some(below) = &below {
                    let partial = &mut incoming[..part.len()];
                    below.receive_into(partial);
                    // The sums of the ranks below first, as one process adds micro-batches.
                    part.iter_mut().zip(&*partial).for_each(|(own, sum)| *own = *sum + *own);
                }
                if let Some(above) = &above {
                    let part: &[T] = part;
                    sends.push(WaitGuard::from(above.immediate_send(scope, part)));
                }
            }
        });
        // Down.
        let chunks: Vec<&mut [T]> = buf.chunks_mut(chunk).collect();
        mpi::request::scope(|scope| {
            let mut sends = Vec::new();
            for part in chunks {
                if let Some(above) = &above {
                    above.receive_into(&mut *part);
                }
                if let Some(below) = &below {
                    let part: &[T] = part;
                    sends.push(WaitGuard::from(below.immediate_send(scope, part)));
                }
            }
        });
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
        let mut incoming = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        self.chain_sum(buf, &mut incoming.0);
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        if buf.is_empty() {
            return;
        }
        let mut incoming = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        self.chain_sum(buf, &mut incoming.1);
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
