//! Data-parallel training across processes: the few collective operations training
//! needs, behind one interface. Two implementations: [`Single`], one process and no
//! communication (the default build), and MPI (`mpi.rs`, cargo feature `mpi`). Nothing
//! here is particular to MPI, so an NCCL implementation can be a third.
//!
//! The training loop (`train::run`) cuts each global batch into one contiguous share per
//! rank (`share`), sums the ranks' gradients with [`Collective::all_reduce_sum`] before
//! every rank takes the same SGD step, and leaves printing, metrics, evaluation and files
//! to rank 0.

#[cfg(feature = "mpi")]
mod mpi;

use std::ops::Range;

/// The collective operations of data-parallel training. Every rank calls each operation
/// in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This process's index, 0..size.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, left in every rank's `buf`.
    fn all_reduce_sum(&self, buf: &mut [f32]);
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
pub fn init() -> anyhow::Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if mpi::launched() {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    Ok(Box::new(Single))
}

/// Whether an MPI launcher started this process (its environment says so), whatever the
/// build: a build without `mpi` can then refuse instead of training N copies alone.
pub fn launched_by_mpi() -> bool {
    ["PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Rank `rank`'s share of a global batch of `len` images (the configured batch is
/// `batch`): contiguous groups of ⌈batch/ranks⌉ images, as `--bn-batch` cuts a batch, so a
/// job of N ranks computes what one process does with `--bn-batch ⌈batch/N⌉` (a short
/// last batch leaves the last ranks fewer images, or none).
pub fn share(len: usize, batch: usize, rank: usize, ranks: usize) -> Range<usize> {
    let group = batch.div_ceil(ranks.max(1));
    (rank * group).min(len)..((rank + 1) * group).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_bn_batch_groups_covering_the_batch_once() {
        assert_eq!((0..2).map(|r| share(128, 128, r, 2)).collect::<Vec<_>>(), [0..64, 64..128]);
        assert_eq!((0..3).map(|r| share(128, 128, r, 3)).collect::<Vec<_>>(), [0..43, 43..86, 86..128]);
        // CIFAR-10's last batch of an epoch holds 80 images.
        assert_eq!((0..2).map(|r| share(80, 128, r, 2)).collect::<Vec<_>>(), [0..64, 64..80]);
        assert_eq!((0..4).map(|r| share(80, 128, r, 4)).collect::<Vec<_>>(), [0..32, 32..64, 64..80, 80..80]);
        assert_eq!(share(128, 128, 0, 1), 0..128);
    }
}
