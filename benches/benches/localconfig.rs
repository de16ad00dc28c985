//! Local-config apply at scale: 10,000 workloads and 1,000 services. `parse` is the whole
//! reload a proxy does when `LOCAL_XDS_PATH` changes (YAML → validated records → indexed
//! `ProxyState`); `build` is the last step alone (`ProxyState::build` on ready records:
//! indexes plus merging each workload into its service's endpoints).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mesh_benches::fixtures;
use ztunnel::localconfig;
use ztunnel::state::ProxyState;

const WORKLOADS: usize = 10_000;
const SERVICES: usize = 1_000;

fn apply(c: &mut Criterion) {
    let yaml = fixtures::local_config_yaml(WORKLOADS, SERVICES);
    let (workloads, services) = fixtures::workloads_and_services(WORKLOADS, SERVICES);
    // The inputs must describe what the bench names: check them once, outside the timing.
    let parsed = match localconfig::parse(&yaml) {
        Ok(state) => state,
        Err(err) => panic!("the generated local config does not parse: {err}"),
    };
    assert_eq!(
        (parsed.workloads.len(), parsed.services.len()),
        (WORKLOADS, SERVICES)
    );
    let built = ProxyState::build(workloads.clone(), services.clone(), Vec::new());
    assert_eq!(
        built
            .services
            .values()
            .map(|s| s.endpoints.len())
            .sum::<usize>(),
        WORKLOADS,
        "every workload must be an endpoint of its service"
    );

    let mut group = c.benchmark_group("localconfig_10k_workloads_1k_services");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(yaml.len() as u64));
    group.bench_function("parse", |b| {
        b.iter_with_large_drop(|| localconfig::parse(black_box(&yaml)))
    });
    group.throughput(Throughput::Elements(WORKLOADS as u64));
    group.bench_function("build", |b| {
        b.iter_batched(
            || (workloads.clone(), services.clone()),
            |(w, s)| ProxyState::build(w, s, Vec::new()),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
