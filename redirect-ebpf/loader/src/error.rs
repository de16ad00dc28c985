//! Errors of the loader, one enum per operation family, each variant with its context.

use std::{io, path::PathBuf};

use crate::NetnsCookie;

/// The hint given whenever the kernel answers EPERM.
pub const CAPS_HINT: &str = "needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)";

/// Loading, attaching or uninstalling the programs failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The pin directory is not on a mounted BPF filesystem.
    #[error(
        "pin dir {pin_dir}: {checked} is not on a bpffs (mount it first: mount -t bpf bpf /sys/fs/bpf)"
    )]
    NotBpffs {
        /// The configured pin directory.
        pin_dir: PathBuf,
        /// The existing ancestor that was checked.
        checked: PathBuf,
    },
    /// The cgroup path is not a cgroup2 directory.
    #[error(
        "cgroup path {path} is not a cgroup2 directory (the programs attach to cgroup v2 only)"
    )]
    NotCgroup2 {
        /// The configured cgroup path.
        path: PathBuf,
    },
    /// The kernel refused for lack of privileges.
    #[error("{what}: permission denied: {CAPS_HINT}")]
    Permission {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The kernel does not support one of the program types.
    #[error("the kernel does not support {program} programs (needs Linux >= {min_kernel})")]
    UnsupportedProgram {
        /// The program (section) name.
        program: &'static str,
        /// The first kernel version supporting it.
        min_kernel: &'static str,
    },
    /// The BPF object could not be parsed or loaded.
    #[error("loading the BPF object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    /// A program failed to load or attach.
    #[error("{what} program {program}: {source}")]
    Program {
        /// load or attach.
        what: &'static str,
        /// The program name.
        program: &'static str,
        /// aya's error (includes the verifier log for load failures).
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing or has an unexpected type or layout.
    #[error("map {map}: {source}")]
    Map {
        /// The map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A pinned map has a different layout than this loader's (an older or newer version).
    #[error(
        "pinned map {path} has key size {key} / value size {value}, expected {want_key} / {want_value}: run uninstall first"
    )]
    IncompatiblePin {
        /// The pinned map path.
        path: PathBuf,
        /// Its key size.
        key: u32,
        /// Its value size.
        value: u32,
        /// Expected key size.
        want_key: u32,
        /// Expected value size.
        want_value: u32,
    },
    /// Pinning or reading a pinned link failed.
    #[error("link {path}: {source}")]
    Link {
        /// The pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Enrolling, unenrolling or updating a map failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The pod has more addresses of one family than the map value holds.
    #[error("pod has {count} {family} addresses, at most {max} are supported")]
    TooManyIps {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// How many were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// Reading the network namespace cookie failed.
    #[error("reading the netns cookie: {0}")]
    Netns(#[source] io::Error),
    /// The cookie is not enrolled.
    #[error("netns {0} is not enrolled")]
    NotEnrolled(NetnsCookie),
    /// A map operation failed.
    #[error("{op} in map {map}: {source}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// The map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Attaching sk_lookup to the netns failed.
    #[error("attaching sk_lookup to netns {cookie}: {source}")]
    Attach {
        /// The netns.
        cookie: NetnsCookie,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning, unpinning or opening a pinned link failed.
    #[error("link {path}: {source}")]
    Link {
        /// The pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Finding a listening socket in another process failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A syscall failed (pidfd_open, reading /proc, ...).
    #[error("{what} (pid {pid}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The process.
        pid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No socket matched.
    #[error("pid {pid} has no TCP socket listening on port {port} in netns {cookie}")]
    NotFound {
        /// The process.
        pid: u32,
        /// The wanted netns.
        cookie: NetnsCookie,
        /// The wanted port.
        port: u16,
    },
}
