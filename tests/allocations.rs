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

/// Allocations in each of `steps` training steps of `model` on `n` random images of
/// `side`² pixels, BatchNorm over groups of `n / 2` as `resnet train` does by default:
/// [count, bytes, largest].
fn allocations_per_step(model: &str, classes: usize, n: usize, side: usize, steps: usize) -> Vec<[usize; 3]> {
    let mut model = ResNet::new(ModelConfig::from_name(model, None, classes).unwrap(), 1);
    model.set_bn_group(Some(n / 2));
    let mut rng = Rng::new(2);
    let images: Vec<f32> = (0..n * side * side * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let mut scratch = StepScratch::default();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut per_step = Vec::new();
    for _ in 0..steps {
        for counter in [&COUNT, &BYTES, &LARGEST] {
            counter.store(0, Ordering::SeqCst);
        }
        pool.install(|| step(&mut model, (side, side), &images, &labels, 1, sgd, &mut scratch));
        per_step.push([&COUNT, &BYTES, &LARGEST].map(|c| c.load(Ordering::SeqCst)));
    }
    per_step
}

// One test: the counters are global, and tests run side by side.
#[test]
fn training_steps_after_the_first_reuse_their_memory() {
    // ResNet-20 at 32×32, and ResNet-50 (7×7 stem, max pool, bottlenecks, projection
    // shortcuts, 1000 classes) on small images.
    for (name, classes, n, side) in [("resnet20", 10, 16, 32), ("resnet50", 1000, 4, 64)] {
        let per_step = allocations_per_step(name, classes, n, side, 4);
        // One activation of the first stage.
        let activation = if side == 32 { n * 32 * 32 * 16 * 4 } else { n * 16 * 16 * 256 * 4 };
        eprintln!(
            "{name}: allocations per step [count, bytes, largest]: {per_step:?}; an activation is {activation} bytes"
        );
        assert!(per_step[0][2] >= activation, "{name}: the first step sets up its buffers");
        for &[count, bytes, largest] in &per_step[1..] {
            if panel::applies(16) {
                // Before 2026-11-29 about 70 for ResNet-20: the `gemm` crate's packing room
                // for the weight gradients of the stride-2 layers and the classifier.
                // Earlier, BatchNorm alone made about 4,000 small vectors per step, and
                // Winograd's weight transform some hundreds.
                assert_eq!(count, 0, "{name}: a later step made {count} allocations ({bytes} bytes)");
            } else {
                // Without AVX2 the GEMMs run on the `gemm` crate, which packs its operands
                // into room it allocates on every call.
                assert!(count <= 200, "{name}: a later step made {count} allocations");
                assert!(largest < activation / 16, "{name}: a later step allocated {largest} bytes at once");
                assert!(bytes < activation, "{name}: a later step allocated {bytes} bytes in all");
            }
        }
    }
}
