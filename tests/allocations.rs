//! After its first training step, a network's steps allocate nothing: every buffer of
//! the engine and the layers is kept from step to step. Measured with a counting
//! allocator around whole steps.
//!
//! The steps run on a pool of one thread. Each worker keeps its own room, grown for the
//! largest tile it has taken; on a pool of many, which worker takes which tile varies
//! from run to run, so a worker could meet its largest tile only in a later step. One
//! thread makes the count the same in every run.

use resnet::engine::panel;
use resnet::engine::sgd::SgdConfig;
use resnet::model::{ModelConfig, ResNet};
use resnet::rng::Rng;
use resnet::train::{StepScratch, step};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as the caller promises.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller promises.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn training_steps_after_the_first_reuse_their_memory() {
    let mut model = ResNet::new(ModelConfig::from_name("resnet20", None, 10).unwrap(), 1);
    // BatchNorm over two groups, as `resnet train` does by default.
    model.set_bn_group(Some(8));
    let n = 16;
    let mut rng = Rng::new(2);
    let images: Vec<f32> = (0..n * 32 * 32 * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let mut scratch = StepScratch::default();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut per_step = Vec::new();
    for _ in 0..4 {
        for counter in [&COUNT, &BYTES, &LARGEST] {
            counter.store(0, Ordering::SeqCst);
        }
        pool.install(|| step(&mut model, (32, 32), &images, &labels, 1, sgd, &mut scratch));
        per_step.push([&COUNT, &BYTES, &LARGEST].map(|c| c.load(Ordering::SeqCst)));
    }
    // One activation of the first stage: 16 images × 32×32 × 16 channels.
    let activation = n * 32 * 32 * 16 * 4;
    eprintln!("allocations per step [count, bytes, largest]: {per_step:?}; an activation is {activation} bytes");
    assert!(per_step[0][2] >= activation, "the first step sets up its buffers");
    for &[count, bytes, largest] in &per_step[1..] {
        if panel::applies(16) {
            // Before 2026-11-29 about 70: the `gemm` crate's packing room for the weight
            // gradients of the stride-2 layers and the classifier. Earlier, BatchNorm
            // alone made about 4,000 small vectors per step, and Winograd's weight
            // transform some hundreds.
            assert_eq!(count, 0, "a later step made {count} allocations ({bytes} bytes)");
        } else {
            // Without AVX2 the GEMMs run on the `gemm` crate, which packs its operands
            // into room it allocates on every call.
            assert!(count <= 100, "a later step made {count} allocations");
            assert!(largest < activation / 16, "a later step allocated {largest} bytes at once");
            assert!(bytes < activation, "a later step allocated {bytes} bytes in all");
        }
    }
}
