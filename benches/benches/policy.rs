//! Policy evaluation: `ProxyState::assert_rbac` for one mTLS connection against 10,000
//! NAMESPACE-scoped ALLOW policies on the destination workload. The connection's identity is
//! allowed by the first policy (`match_early`), only by the last (`match_late`), or by none
//! (`no_match`: every policy is evaluated, then the connection is refused).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_benches::fixtures::{self, PolicyCase};

const POLICIES: usize = 10_000;

fn assert_rbac(c: &mut Criterion) {
    let state = fixtures::policy_state(POLICIES);
    let server = fixtures::server_workload();
    assert_eq!(
        state.policies_for(&server).len(),
        POLICIES,
        "every generated policy must apply to the server"
    );
    let mut group = c.benchmark_group("assert_rbac_10k_policies");
    for case in PolicyCase::ALL {
        let conn = fixtures::policy_connection(case, POLICIES);
        // The bench measures the decision it claims to: check it once, outside the timing.
        let allowed = state.assert_rbac(&server, &conn).is_ok();
        assert_eq!(allowed, case != PolicyCase::NoMatch, "{case:?}");
        group.bench_function(case.name(), |b| {
            b.iter(|| state.assert_rbac(black_box(&server), black_box(&conn)))
        });
    }
    group.finish();
}

criterion_group!(benches, assert_rbac);
criterion_main!(benches);
