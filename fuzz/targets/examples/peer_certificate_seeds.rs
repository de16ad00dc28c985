//! Writes the DER seeds of the `peer_certificate` target: a workload leaf issued by
//! ztunnel's own `LocalCa` (EC P-256, one SPIFFE URI SAN, as every mesh peer presents) and
//! that CA's self-signed root (no URI SAN).
//!
//! ```sh
//! cargo run -p fuzz-targets --example peer_certificate_seeds -- fuzz/corpus/peer_certificate
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use ztunnel::identity::LocalCa;

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: peer_certificate_seeds <corpus dir>")?,
    );
    let ca_dir = std::env::temp_dir().join(format!("mesh-fuzz-seed-ca-{}", std::process::id()));
    let result = (|| {
        let ca = LocalCa::load_or_create(&ca_dir, "cluster.local", Duration::from_secs(3600))?;
        let now = SystemTime::now();
        let id = Identity::new("cluster.local", "default", "echo");
        let cert = ca.issue(&id, now, now + Duration::from_secs(24 * 3600))?;
        let leaf = cert.chain.first().ok_or("the CA issued an empty chain")?;
        std::fs::write(out.join("local-ca-leaf.der"), leaf)?;
        let root = ca.roots().first().ok_or("the CA has no root")?;
        std::fs::write(out.join("local-ca-root.der"), root)?;
        Ok::<_, Box<dyn Error>>(())
    })();
    std::fs::remove_dir_all(&ca_dir)?;
    result
}
