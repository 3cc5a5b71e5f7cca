//! Data-parallel training across processes: the few collective operations training
//! needs, behind one interface. Two implementations: [`Single`], one process and no
//! communication (the default build), and MPI (`mpi.rs`, cargo feature `mpi`). Nothing
//! here is particular to MPI, so an NCCL implementation can be a third.
//!
//! The training loop (`train::run`) cuts each global batch into one contiguous share per
//! rank (`share`), sums the ranks' gradients with [`Collective::all_reduce_sum`] before
//! every rank takes the same SGD step, and leaves printing, metrics, evaluation and files
//! to rank 0.

mod background;
#[cfg(feature = "mpi")]
mod mpi;

pub use background::Background;

use std::ops::Range;
use std::sync::Arc;

/// The collective operations of data-parallel training. Every rank calls each operation
/// in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This process's index, 0..size.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, left in every rank's `buf`.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Starts [`all_reduce_sum`](Collective::all_reduce_sum) of `buf`; [`Pending::wait`]
    /// hands the sum back. Where the transport has no other thread or stream to run it on,
    /// it is done before this returns.
    fn start_all_reduce_sum(&self, mut buf: Vec<f32>) -> Pending {
        self.all_reduce_sum(&mut buf);
        Pending::Done(buf)
    }
    /// [`all_reduce_sum`](Collective::all_reduce_sum) on f64 (counts and loss sums).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Rank `root`'s `buf` to every rank.
    fn broadcast(&self, buf: &mut [f32], root: usize);
    /// Ends the whole job now, every rank, with exit code `code`: after an error on this
    /// rank, the others would otherwise wait for it forever.
    fn abort(&self, code: i32) -> !;
    /// What started the job, for messages: "1 process", "MPI, 4 ranks".
    fn describe(&self) -> String;
}

/// An all-reduce under way ([`Collective::start_all_reduce_sum`]).
pub enum Pending {
    Done(Vec<f32>),
    Running(std::sync::mpsc::Receiver<Vec<f32>>),
}

impl Pending {
    /// The sum, once every rank has contributed.
    pub fn wait(self) -> Vec<f32> {
        match self {
            Pending::Done(buf) => buf,
            Pending::Running(sum) => sum.recv().expect("the communication thread ended"),
        }
    }
}

/// One process: nothing to communicate.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [f32], _: usize) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

/// The job this process belongs to: MPI's world where the build has the `mpi` feature
/// and an MPI launcher (mpirun, mpiexec, srun) started it, else one process.
pub fn init() -> anyhow::Result<Arc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if mpi::launched() {
        return Ok(Arc::new(mpi::Mpi::init()?));
    }
    Ok(Arc::new(Single))
}

/// Whether an MPI launcher started this process (its environment says so), whatever the
/// build: a build without `mpi` can then refuse instead of training N copies alone.
pub fn launched_by_mpi() -> bool {
    ["PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Which part of every global batch a process takes: the batch is cut into
/// `ranks × micro` near-equal micro-batches (as `--accumulate` cuts it) and rank `rank`
/// takes the `micro` consecutive ones from `rank × micro`. A job of N ranks then computes
/// the gradients and weights one process computes with `--accumulate N` (the running
/// averages differ: each rank's follow its own micro-batches, and rank 0's are kept), and a
/// run keeps its micro-batches, and so its BatchNorm groups, when it resumes on a number of
/// ranks that divides them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub ranks: usize,
    /// Micro-batches per rank (`--accumulate`).
    pub micro: usize,
}

impl Part {
    /// The whole batch: one process.
    pub const WHOLE: Part = Part { rank: 0, ranks: 1, micro: 1 };

    /// This part of a global batch of `len` images (possibly none, when `len` is short).
    pub fn of(self, len: usize) -> Range<usize> {
        let parts = (self.ranks * self.micro).max(1);
        let first = crate::engine::split_range(len, parts, self.rank * self.micro);
        let last = crate::engine::split_range(len, parts, (self.rank + 1) * self.micro - 1);
        first.start..last.end
    }
}

/// BatchNorm's statistics gathered over a job's ranks (`--sync-bn`).
pub struct SyncBn(pub Arc<dyn Collective>);

impl crate::engine::batchnorm::SyncStats for SyncBn {
    fn first_to_all(&self, values: &mut [f32]) {
        self.0.broadcast(values, 0);
    }
    fn add_up(&self, sums: &mut [f64]) {
        self.0.all_reduce_sum_f64(sums);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(len: usize, ranks: usize, micro: usize) -> Vec<Range<usize>> {
        (0..ranks).map(|rank| Part { rank, ranks, micro }.of(len)).collect()
    }

    #[test]
    fn shares_are_micro_batches_covering_the_batch_once() {
        assert_eq!(shares(128, 2, 1), [0..64, 64..128]);
        assert_eq!(shares(128, 3, 1), [0..43, 43..86, 86..128]);
        // CIFAR-10's last batch of an epoch holds 80 images: cut as --accumulate cuts it.
        assert_eq!(shares(80, 2, 1), [0..40, 40..80]);
        assert_eq!(shares(80, 4, 1), [0..20, 20..40, 40..60, 60..80]);
        assert_eq!(shares(3, 4, 1), [0..1, 1..2, 2..3, 3..3]);
        assert_eq!(Part::WHOLE.of(128), 0..128);
    }

    #[test]
    fn a_rank_holds_its_micro_batches_as_they_were_on_more_ranks() {
        // 10 images in four micro-batches: 3, 3, 2, 2; on two ranks, 3+3 and 2+2.
        for len in [128, 80, 10, 3] {
            let four = shares(len, 4, 1);
            let two = shares(len, 2, 2);
            assert_eq!(two, [four[0].start..four[1].end, four[2].start..four[3].end]);
            // Each rank cuts its share into 2 as --accumulate does: the same micro-batches.
            for (r, share) in two.iter().enumerate() {
                for k in 0..2 {
                    let micro = crate::engine::split_range(share.len(), 2, k);
                    assert_eq!(micro.len(), four[2 * r + k].len(), "{len} images, rank {r}, micro-batch {k}");
                }
            }
            assert_eq!(shares(len, 1, 4), vec![0..len]);
        }
    }
}
