//! Engine cost per tick for a host with 8 GPUs × 16 vGPUs, and the knob writes
//! per second per GPU that each policy needs.
//!
//! Run with `cargo run --release -p gvm-sched --example bench_engine`.
//!
//! Each GPU is simulated by `gvm-gpu-model` (kernels 10 µs–5 ms, a quarter of
//! the vGPUs with 3 contexts, a third idling for a second mid-run, priorities
//! 7–9, shares 1/16) and driven by its engine every 1 ms. The counters fed to
//! each engine are recorded; the timing then replays them into fresh engines,
//! so it measures the engine alone (same decisions, no model cost).

use std::error::Error;
use std::time::Instant;

use gvm_gpu_model::{Gpu, KernelDist, ModelConfig, Span, VgpuSpec, Workload};
use gvm_sched::{Engine, EngineConfig, Nanos, Policy, VgpuId, VgpuInput};

const GPUS: usize = 8;
const VGPUS: usize = 16;
const TICK: Nanos = Nanos::from_millis(1);
const DURATION: Nanos = Nanos::from_secs(5);

/// The counters one engine saw, tick by tick.
type Trace = Vec<(Nanos, Vec<VgpuInput>)>;

fn specs(gpu: usize) -> Vec<VgpuSpec> {
    (0..VGPUS)
        .map(|i| {
            let mut w = Workload::busy(KernelDist::LogUniform {
                min: Nanos::from_micros(10),
                max: Nanos::from_millis(5),
            });
            if i % 4 == 0 {
                w = w.with_contexts(3);
            }
            if i % 3 == 1 {
                w = w.during(vec![
                    Span {
                        start: Nanos::ZERO,
                        end: Nanos::from_secs(2),
                    },
                    Span {
                        start: Nanos::from_secs(3),
                        end: Nanos::MAX,
                    },
                ]);
            }
            VgpuSpec {
                id: VgpuId((gpu * VGPUS + i) as u128),
                priority: 7 + (i % 3) as u8,
                share: 1.0 / VGPUS as f64,
                workload: w,
                seed: (gpu * 1_000 + i) as u64,
            }
        })
        .collect()
}

/// Simulates one GPU under `policy`, returning (priority, freeze) writes/s and the trace.
fn record(gpu: usize, policy: Policy) -> Result<((f64, f64), Trace), Box<dyn Error>> {
    let mut model = Gpu::new(ModelConfig::default(), specs(gpu))?;
    let mut engine = Engine::new(EngineConfig::with_policy(policy))?;
    let mut trace = Vec::new();
    let mut actions = Vec::new();
    while model.now() < DURATION {
        let inputs = model.counters();
        engine.tick_into(model.now(), &inputs, &mut actions);
        for a in &actions {
            model.apply(a);
        }
        trace.push((model.now(), inputs));
        model.advance_to(model.now() + TICK);
    }
    let s = engine.stats();
    let secs = DURATION.as_secs_f64();
    Ok((
        (
            s.priority_writes as f64 / secs,
            s.freeze_writes as f64 / secs,
        ),
        trace,
    ))
}

fn main() -> Result<(), Box<dyn Error>> {
    println!(
        "{GPUS} GPUs x {VGPUS} vGPUs, tick {TICK}, {}s simulated per GPU",
        DURATION.as_secs_f64()
    );
    println!(
        "policy        ns/tick(1 GPU)  host CPU at 1 tick/ms/GPU  writes/s per GPU (priority + freeze)"
    );
    for policy in Policy::ALL {
        let (mut prio_w, mut freeze_w) = (0.0, 0.0);
        let mut traces = Vec::new();
        for g in 0..GPUS {
            let ((p, f), t) = record(g, policy)?;
            prio_w += p;
            freeze_w += f;
            traces.push(t);
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut engines = (0..GPUS)
                .map(|_| Engine::new(EngineConfig::with_policy(policy)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            let mut ticks = 0u64;
            let mut sink = 0usize;
            let start = Instant::now();
            for (engine, trace) in engines.iter_mut().zip(&traces) {
                for (now, inputs) in trace {
                    engine.tick_into(*now, inputs, &mut out);
                    sink += out.len();
                    ticks += 1;
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / ticks as f64;
            std::hint::black_box(sink);
            best = best.min(ns);
        }
        let ticks_per_sec = GPUS as f64 * (1e9 / TICK.as_nanos() as f64);
        let core_pct = best * ticks_per_sec / 1e9 * 100.0;
        println!(
            "{:<13} {:>14.0}  {:>24.3}%  {:>8.1} ({:.1} + {:.1})",
            policy.as_str(),
            best,
            core_pct,
            (prio_w + freeze_w) / GPUS as f64,
            prio_w / GPUS as f64,
            freeze_w / GPUS as f64
        );
    }
    Ok(())
}
