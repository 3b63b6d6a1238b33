//! Small fixed workloads whose executed instructions are counted under valgrind's
//! callgrind (`cargo xtask bench --instructions`): unlike wall time on a shared
//! machine, the count is the same on every run of the same binary, so a 2% change is
//! a real change.
//!
//! Each workload runs on a one-thread rayon pool (so no work-stealing spin loops are
//! counted) inside [`measured_region`], the only function callgrind collects in.

use crate::workloads::{filled, ConvCase, ConvRun, GemmCase, GemmRun, TrainCase, TrainRun};

/// A counted workload.
pub struct InstructionWorkload {
    /// Name used in the baseline file.
    pub name: &'static str,
    /// Builds the state and returns the closure to count.
    pub setup: fn() -> Box<dyn FnMut()>,
}

/// The counted set: GEMM, 1-D/2-D/3-D convolution forward+backward, a training step,
/// and the elementwise kernels.
pub const WORKLOADS: [InstructionWorkload; 6] = [
    InstructionWorkload {
        name: "gemm_f32_64x64x64",
        setup: || {
            let mut run = GemmRun::new(GemmCase { id: "I", m: 64, k: 64, n: 64 });
            Box::new(move || run.ours())
        },
    },
    InstructionWorkload {
        name: "conv1d_fwd_bwd",
        setup: || {
            let case = ConvCase::plain("I", 2, 8, &[128], 8, &[9], 1, 4);
            let mut run = ConvRun::new(&case);
            Box::new(move || run.forward_backward())
        },
    },
    InstructionWorkload {
        name: "conv2d_fwd_bwd",
        setup: || {
            let case = ConvCase::plain("I", 2, 4, &[14, 14], 8, &[5, 5], 1, 2);
            let mut run = ConvRun::new(&case);
            Box::new(move || run.forward_backward())
        },
    },
    InstructionWorkload {
        name: "conv3d_fwd_bwd",
        setup: || {
            let case = ConvCase::plain("I", 1, 4, &[6, 8, 8], 4, &[3, 3, 3], 1, 1);
            let mut run = ConvRun::new(&case);
            Box::new(move || run.forward_backward())
        },
    },
    InstructionWorkload {
        name: "mlp_train_step_b16",
        setup: || {
            let mut run = TrainRun::new(TrainCase::T1);
            run.batch = 16;
            Box::new(move || run.step())
        },
    },
    InstructionWorkload {
        name: "elementwise_64k",
        setup: || {
            let x = filled(1 << 16, 11);
            let mut y = vec![0.0f32; x.len()];
            let mut dx = vec![0.0f32; x.len()];
            Box::new(move || {
                use nn_kernels::elementwise::{activation_backward, activation_forward, axpy, sum, Activation};
                activation_forward(Activation::Relu, &x, &mut y).expect("equal lengths");
                activation_backward(Activation::Relu, &x, &y, &x, &mut dx).expect("equal lengths");
                axpy(0.5, &x, &mut dx).expect("equal lengths");
                std::hint::black_box(sum(&dx));
            })
        },
    },
];

/// The region callgrind counts (`--toggle-collect`); never inlined, so its symbol exists.
#[inline(never)]
pub fn measured_region(f: &mut dyn FnMut()) {
    f();
}

/// Runs one workload: setup and one warm-up call outside the counted region, then one
/// counted call, all on a one-thread pool.
pub fn run(name: &str) -> Option<()> {
    let workload = WORKLOADS.iter().find(|w| w.name == name)?;
    crate::harness::with_threads(1, || {
        let mut f = (workload.setup)();
        f();
        measured_region(&mut *f);
    });
    Some(())
}
