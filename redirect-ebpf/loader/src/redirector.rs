//! [`Redirector`]: load, pin, attach; enrollment map updates.

use std::{
    collections::HashSet,
    fs::File,
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapInfo, SockHash},
    programs::links::{FdLink, PinnedLink},
    programs::{ProgramError, ProgramType, SkLookup},
};
use redirect_ebpf_common::{
    ClientKey, IpKey, MAX_POD_IPS, OrigDst, PodIps, RedirectConfig, TupleKey, map_names,
};

use crate::{
    EnrollError, Enrolled, LoadError, LoaderConfig, NetnsCookie, PodAddrs, PodNetns, pins, sys,
};

/// The compiled BPF object (built by build.rs from `redirect-ebpf/bpf/redirect.c`).
static BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.o"));

/// Expected (key size, value size) per map, to refuse pinned maps of another layout.
fn expected_layout(map: &str) -> (usize, usize) {
    use std::mem::size_of;
    match map {
        map_names::CONFIG => (size_of::<u32>(), size_of::<RedirectConfig>()),
        map_names::ENROLLED => (size_of::<u64>(), size_of::<PodIps>()),
        map_names::POD_IPS => (size_of::<IpKey>(), size_of::<u64>()),
        map_names::ORIG_COOKIE => (size_of::<u64>(), size_of::<OrigDst>()),
        map_names::ORIG_DST => (size_of::<ClientKey>(), size_of::<OrigDst>()),
        map_names::BYPASS => (size_of::<TupleKey>(), size_of::<u8>()),
        map_names::NODE_ADDRS => (size_of::<IpKey>(), size_of::<u8>()),
        map_names::LISTENERS => (size_of::<IpKey>(), size_of::<u32>()),
        _ => (0, 0),
    }
}

/// The loaded programs and the pinned maps of one node.
///
/// Dropping it leaves everything attached (links and maps are pinned); see
/// [`Redirector::uninstall`].
pub struct Redirector {
    config: LoaderConfig,
    ebpf: Ebpf,
    enrolled: HashMap<MapData, u64, PodIps>,
    pod_ips: HashMap<MapData, IpKey, u64>,
    node_addrs: HashMap<MapData, IpKey, u8>,
    listeners: SockHash<MapData, IpKey>,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// Loads the programs, pins the maps under `pin_dir/maps` (reusing maps pinned by a
    /// previous run, so enrollment survives a restart) and attaches the cgroup programs to
    /// `cgroup_path` as links pinned under `pin_dir/links` (links pinned by a previous run
    /// are kept, not attached twice).
    ///
    /// The bpffs holding `pin_dir` must be mounted; nothing is mounted here.
    pub fn load(config: &LoaderConfig) -> Result<Self, LoadError> {
        pins::prepare_pin_dir(&config.pin_dir)?;
        pins::check_cgroup2(&config.cgroup_path)?;
        let cgroup = File::open(&config.cgroup_path).map_err(|source| LoadError::Io {
            what: "opening cgroup",
            path: config.cgroup_path.clone(),
            source,
        })?;

        let map_paths: Vec<(&str, std::path::PathBuf)> = map_names::ALL
            .iter()
            .map(|name| (*name, pins::map_pin(&config.pin_dir, name)))
            .collect();
        for (name, path) in &map_paths {
            check_pinned_layout(name, path)?;
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(BPF_OBJECT).map_err(object_error)?;

        let mut cfg_map: Array<MapData, RedirectConfig> =
            Array::try_from(take_map(&mut ebpf, map_names::CONFIG)?)
                .map_err(map_err(map_names::CONFIG))?;
        cfg_map
            .set(
                0,
                RedirectConfig {
                    mark: config.mark,
                    outbound_port: config.outbound_port,
                    inbound_port: config.inbound_port,
                    hbone_port: config.hbone_port,
                    dns_port: config.dns_port,
                    skip_port: 53,
                    _pad: 0,
                    delivery_mark: config.delivery_mark,
                },
                0,
            )
            .map_err(map_err(map_names::CONFIG))?;

        load_programs(&mut ebpf)?;
        for (link, program) in pins::CGROUP_LINKS {
            attach_cgroup_program(&mut ebpf, link, program, &cgroup, &config.pin_dir)?;
        }

        let enrolled = HashMap::try_from(take_map(&mut ebpf, map_names::ENROLLED)?)
            .map_err(map_err(map_names::ENROLLED))?;
        let pod_ips = HashMap::try_from(take_map(&mut ebpf, map_names::POD_IPS)?)
            .map_err(map_err(map_names::POD_IPS))?;
        let node_addrs = HashMap::try_from(take_map(&mut ebpf, map_names::NODE_ADDRS)?)
            .map_err(map_err(map_names::NODE_ADDRS))?;
        let listeners = SockHash::try_from(take_map(&mut ebpf, map_names::LISTENERS)?)
            .map_err(map_err(map_names::LISTENERS))?;
        Ok(Self {
            config: config.clone(),
            ebpf,
            enrolled,
            pod_ips,
            node_addrs,
            listeners,
        })
    }

    /// The config this was loaded with.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Enrolls a pod netns: its outbound TCP is redirected to the proxy's outbound port and
    /// its inbound TCP to the listener set with [`Redirector::set_inbound_listener`]
    /// (refused until then: fail closed). Idempotent; re-enrolling updates the addresses.
    pub fn enroll(&mut self, pod: &PodNetns<'_>) -> Result<Enrolled, EnrollError> {
        let ips = pod_ips_value(pod)?;
        let cookie = crate::netns_cookie(pod.netns)?;
        let new_keys: HashSet<IpKey> = ip_keys(&ips).into_iter().collect();
        // Addresses this netns had before and no longer has.
        let stale: Vec<IpKey> = self
            .keys_of(cookie)?
            .into_iter()
            .filter(|k| !new_keys.contains(k))
            .collect();
        for key in &stale {
            ignore_missing(self.pod_ips.remove(key))
                .map_err(enroll_map_err("remove", map_names::POD_IPS))?;
            ignore_missing(self.listeners.remove(key))
                .map_err(enroll_map_err("remove", map_names::LISTENERS))?;
        }
        for key in &new_keys {
            // An address taken over from another netns (pod IP reuse): drop that pod's
            // listener for it.
            match self.pod_ips.get(key, 0) {
                Ok(owner) if owner != cookie.0 => ignore_missing(self.listeners.remove(key))
                    .map_err(enroll_map_err("remove", map_names::LISTENERS))?,
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(enroll_map_err("get", map_names::POD_IPS)(e)),
            }
            self.pod_ips
                .insert(key, cookie.0, 0)
                .map_err(enroll_map_err("insert", map_names::POD_IPS))?;
        }
        self.enrolled
            .insert(cookie.0, ips, 0)
            .map_err(enroll_map_err("insert", map_names::ENROLLED))?;
        self.attach_sk_lookup(pod.netns, cookie)?;
        tracing::debug!(%cookie, "enrolled pod netns");
        Ok(Enrolled { cookie })
    }

    /// Unenrolls a pod netns: removes its map entries and its listener, and unpins (detaches)
    /// its sk_lookup link. Idempotent.
    pub fn unenroll(&mut self, cookie: NetnsCookie) -> Result<(), EnrollError> {
        let keys = self.keys_of(cookie)?;
        for key in &keys {
            ignore_missing(self.listeners.remove(key))
                .map_err(enroll_map_err("remove", map_names::LISTENERS))?;
            ignore_missing(self.pod_ips.remove(key))
                .map_err(enroll_map_err("remove", map_names::POD_IPS))?;
        }
        ignore_missing(self.enrolled.remove(&cookie.0))
            .map_err(enroll_map_err("remove", map_names::ENROLLED))?;
        let pin = pins::sk_lookup_link_pin(&self.config.pin_dir, cookie);
        pins::remove_if_exists(&pin).map_err(|source| EnrollError::Link { path: pin, source })?;
        tracing::debug!(%cookie, "unenrolled pod netns");
        Ok(())
    }

    /// Puts the proxy's inbound listener (a TCP socket listening on the inbound port in the
    /// pod netns) into the listener map for every address of the enrolled pod `cookie`.
    /// The entry disappears by itself when the socket is closed.
    pub fn set_inbound_listener(
        &mut self,
        cookie: NetnsCookie,
        listener: BorrowedFd<'_>,
    ) -> Result<(), EnrollError> {
        match self.enrolled.get(&cookie.0, 0) {
            Ok(_) => {}
            Err(MapError::KeyNotFound) => return Err(EnrollError::NotEnrolled(cookie)),
            Err(e) => return Err(enroll_map_err("get", map_names::ENROLLED)(e)),
        }
        for key in self.keys_of(cookie)? {
            self.listeners
                .insert(key, listener.as_raw_fd(), 0)
                .map_err(enroll_map_err("insert", map_names::LISTENERS))?;
        }
        Ok(())
    }

    /// Removes the inbound listener of pod `cookie` (its inbound traffic is then refused).
    pub fn clear_inbound_listener(&mut self, cookie: NetnsCookie) -> Result<(), EnrollError> {
        for key in self.keys_of(cookie)? {
            ignore_missing(self.listeners.remove(&key))
                .map_err(enroll_map_err("remove", map_names::LISTENERS))?;
        }
        Ok(())
    }

    /// Replaces the node's own addresses: inbound connections from them (kubelet probes)
    /// are never redirected.
    pub fn set_node_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), EnrollError> {
        let want: HashSet<IpKey> = addrs.iter().map(|ip| IpKey::from_ip(*ip)).collect();
        let have: Vec<IpKey> = self
            .node_addrs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(enroll_map_err("iterate", map_names::NODE_ADDRS))?;
        for key in have.iter().filter(|k| !want.contains(k)) {
            ignore_missing(self.node_addrs.remove(key))
                .map_err(enroll_map_err("remove", map_names::NODE_ADDRS))?;
        }
        for key in &want {
            self.node_addrs
                .insert(key, 1, 0)
                .map_err(enroll_map_err("insert", map_names::NODE_ADDRS))?;
        }
        Ok(())
    }

    /// The enrolled pod netns and their addresses, read back from the pinned map (for
    /// reconciliation after a restart).
    pub fn enrolled(&self) -> Result<Vec<(NetnsCookie, PodAddrs)>, EnrollError> {
        let mut out = Vec::new();
        for entry in self.enrolled.iter() {
            let (cookie, ips) = entry.map_err(enroll_map_err("iterate", map_names::ENROLLED))?;
            out.push((NetnsCookie(cookie), pod_addrs(&ips)));
        }
        out.sort_by_key(|(cookie, _)| *cookie);
        Ok(out)
    }

    /// Detaches everything and removes the pin dir: unpins the cgroup and sk_lookup links
    /// (detaching them once no process holds them) and the maps. Idempotent.
    pub fn uninstall(config: &LoaderConfig) -> Result<(), LoadError> {
        let pin_dir = &config.pin_dir;
        if !pin_dir.exists() {
            return Ok(());
        }
        for dir in [pins::links_dir(pin_dir), pins::maps_dir(pin_dir)] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "reading",
                        path: dir,
                        source,
                    });
                }
            };
            for entry in entries {
                let entry = entry.map_err(|source| LoadError::Io {
                    what: "reading",
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                pins::remove_if_exists(&path).map_err(|source| LoadError::Io {
                    what: "unpinning",
                    path: path.clone(),
                    source,
                })?;
            }
            remove_dir_if_exists(&dir)?;
        }
        remove_dir_if_exists(pin_dir)
    }

    /// The addresses `pod_ips` currently assigns to `cookie`. Only these are touched for a
    /// netns: an address of a deleted pod may already belong to a newer pod.
    fn keys_of(&self, cookie: NetnsCookie) -> Result<Vec<IpKey>, EnrollError> {
        let mut keys = Vec::new();
        for entry in self.pod_ips.iter() {
            let (key, owner) = entry.map_err(enroll_map_err("iterate", map_names::POD_IPS))?;
            if owner == cookie.0 {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn attach_sk_lookup(
        &mut self,
        netns: BorrowedFd<'_>,
        cookie: NetnsCookie,
    ) -> Result<(), EnrollError> {
        let pin = pins::sk_lookup_link_pin(&self.config.pin_dir, cookie);
        if PinnedLink::from_pin(&pin).is_ok() {
            return Ok(());
        }
        pins::remove_if_exists(&pin).map_err(|source| EnrollError::Link {
            path: pin.clone(),
            source,
        })?;
        let attach_err = |source: ProgramError| EnrollError::Attach {
            cookie,
            source: Box::new(source),
        };
        let program: &mut SkLookup = self
            .ebpf
            .program_mut(pins::SK_LOOKUP_PROGRAM)
            .ok_or_else(|| attach_err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(attach_err)?;
        let id = program.attach(netns).map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        FdLink::from(link)
            .pin(&pin)
            .map_err(|e| EnrollError::Link {
                path: pin.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        Ok(())
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Map {
        map: name,
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map {
        map,
        source: Box::new(source),
    }
}

fn enroll_map_err(op: &'static str, map: &'static str) -> impl Fn(MapError) -> EnrollError {
    move |source| EnrollError::Map {
        op,
        map,
        source: Box::new(source),
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), LoadError> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LoadError::Io {
            what: "removing",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Refuses a pinned map whose key or value size differs from this build's.
fn check_pinned_layout(name: &str, path: &Path) -> Result<(), LoadError> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).map_err(|e| LoadError::Io {
        what: "opening pinned map",
        path: path.to_path_buf(),
        source: map_io_error(e),
    })?;
    let (want_key, want_value) = expected_layout(name);
    let (key, value) = (info.key_size(), info.value_size());
    if key as usize != want_key || value as usize != want_value {
        return Err(LoadError::IncompatiblePin {
            path: path.to_path_buf(),
            key,
            value,
            want_key: want_key as u32,
            want_value: want_value as u32,
        });
    }
    Ok(())
}

fn map_io_error(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        other => io::Error::other(other.to_string()),
    }
}

/// (program name, aya program type, first kernel with that program type)
const PROGRAMS: [(&str, ProgramType, &str); 5] = [
    ("redir_connect4", ProgramType::CgroupSockAddr, "4.17"),
    ("redir_connect6", ProgramType::CgroupSockAddr, "4.17"),
    ("redir_sockops", ProgramType::SockOps, "4.13"),
    ("redir_getsockopt", ProgramType::CgroupSockopt, "5.3"),
    ("redir_sk_lookup", ProgramType::SkLookup, "5.9"),
];

/// First kernel where every helper the programs call is available to them
/// (`bpf_get_netns_cookie` in sockops and cgroup/getsockopt programs).
const HELPERS_MIN_KERNEL: &str = "5.15 (bpf_get_netns_cookie in sockops/sockopt programs)";

fn load_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, ptype, min_kernel) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(LoadError::Program {
            what: "find",
            program: name,
            source: Box::new(ProgramError::NotLoaded),
        })?;
        let result = match program {
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::SockOps(p) => p.load(),
            aya::programs::Program::CgroupSockopt(p) => p.load(),
            aya::programs::Program::SkLookup(p) => p.load(),
            _ => Err(ProgramError::UnexpectedProgramType),
        };
        if let Err(source) = result {
            if let ProgramError::LoadError { verifier_log, .. } = &source
                && verifier_log.to_string().contains("unknown func")
            {
                return Err(LoadError::UnsupportedProgram {
                    program: name,
                    min_kernel: HELPERS_MIN_KERNEL,
                });
            }
            if aya::sys::is_program_supported(ptype).ok() == Some(false) {
                return Err(LoadError::UnsupportedProgram {
                    program: name,
                    min_kernel,
                });
            }
            return Err(program_error("load", name, source));
        }
    }
    Ok(())
}

fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    link_name: &'static str,
    name: &'static str,
    cgroup: &File,
    pin_dir: &Path,
) -> Result<(), LoadError> {
    let pin = pins::cgroup_link_pin(pin_dir, link_name);
    if pin.exists() {
        // Attached by a previous run: keep that link (its programs share the pinned maps).
        PinnedLink::from_pin(&pin).map_err(|e| LoadError::Link {
            path: pin.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        return Ok(());
    }
    let program = ebpf.program_mut(name).ok_or(LoadError::Program {
        what: "find",
        program: name,
        source: Box::new(ProgramError::NotLoaded),
    })?;
    let attach_type = match link_name {
        "connect4" => sys::BPF_CGROUP_INET4_CONNECT,
        "connect6" => sys::BPF_CGROUP_INET6_CONNECT,
        "sockops" => sys::BPF_CGROUP_SOCK_OPS,
        _ => sys::BPF_CGROUP_GETSOCKOPT,
    };
    let prog_fd = match program {
        aya::programs::Program::CgroupSockAddr(p) => p.fd(),
        aya::programs::Program::SockOps(p) => p.fd(),
        aya::programs::Program::CgroupSockopt(p) => p.fd(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
    .map_err(|e| program_error("attach", name, e))?;
    let link =
        sys::bpf_link_create(prog_fd.as_fd(), cgroup.as_fd(), attach_type).map_err(|source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                LoadError::Permission {
                    what: format!("attaching program {name} to the cgroup"),
                    source,
                }
            } else {
                LoadError::Link {
                    path: pin.clone(),
                    source,
                }
            }
        })?;
    sys::bpf_obj_pin(link.as_fd(), &pin).map_err(|source| LoadError::Link {
        path: pin.clone(),
        source,
    })?;
    Ok(())
}

fn program_error(what: &'static str, program: &'static str, source: ProgramError) -> LoadError {
    if let Some(e) = eperm_in_program_error(&source) {
        return LoadError::Permission {
            what: format!("{what} program {program}"),
            source: e,
        };
    }
    LoadError::Program {
        what,
        program,
        source: Box::new(source),
    }
}

fn eperm_in_program_error(e: &ProgramError) -> Option<io::Error> {
    let io_error = match e {
        ProgramError::LoadError { io_error, .. } => io_error,
        ProgramError::SyscallError(s) => &s.io_error,
        _ => return None,
    };
    (io_error.raw_os_error() == Some(libc::EPERM))
        .then(|| io::Error::from_raw_os_error(libc::EPERM))
}

fn object_error(e: aya::EbpfError) -> LoadError {
    let eperm = match &e {
        aya::EbpfError::MapError(MapError::CreateError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EPERM)
        }
        aya::EbpfError::MapError(MapError::SyscallError(s)) => {
            s.io_error.raw_os_error() == Some(libc::EPERM)
        }
        aya::EbpfError::BtfError(aya::BtfError::LoadError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EPERM)
        }
        _ => false,
    };
    if eperm {
        return LoadError::Permission {
            what: "loading the BPF object (maps, BTF)".to_string(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
    }
    LoadError::Object(Box::new(e))
}

fn pod_ips_value(pod: &PodNetns<'_>) -> Result<PodIps, EnrollError> {
    if pod.ipv4.len() > MAX_POD_IPS {
        return Err(EnrollError::TooManyIps {
            family: "IPv4",
            count: pod.ipv4.len(),
            max: MAX_POD_IPS,
        });
    }
    if pod.ipv6.len() > MAX_POD_IPS {
        return Err(EnrollError::TooManyIps {
            family: "IPv6",
            count: pod.ipv6.len(),
            max: MAX_POD_IPS,
        });
    }
    let mut ips = PodIps::default();
    for (slot, ip) in ips.v4.iter_mut().zip(&pod.ipv4) {
        *slot = IpKey::from(*ip);
    }
    for (slot, ip) in ips.v6.iter_mut().zip(&pod.ipv6) {
        *slot = IpKey::from(*ip);
    }
    ips.n_v4 = pod.ipv4.len() as u32;
    ips.n_v6 = pod.ipv6.len() as u32;
    Ok(ips)
}

fn valid_v4(ips: &PodIps) -> &[IpKey] {
    &ips.v4[..(ips.n_v4 as usize).min(MAX_POD_IPS)]
}

fn valid_v6(ips: &PodIps) -> &[IpKey] {
    &ips.v6[..(ips.n_v6 as usize).min(MAX_POD_IPS)]
}

fn ip_keys(ips: &PodIps) -> Vec<IpKey> {
    valid_v4(ips).iter().chain(valid_v6(ips)).copied().collect()
}

fn pod_addrs(ips: &PodIps) -> PodAddrs {
    let mut out = PodAddrs::default();
    for key in ip_keys(ips) {
        match key.to_ip() {
            IpAddr::V4(v4) => out.ipv4.push(v4),
            IpAddr::V6(v6) => out.ipv6.push(v6),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn pod_ips_are_bounded_and_round_trip() {
        let netns = File::open("/proc/self/ns/net").expect("own netns");
        let mut pod = PodNetns {
            netns: netns.as_fd(),
            ipv4: vec![
                "10.0.0.1".parse().expect("ip"),
                "10.0.0.2".parse().expect("ip"),
            ],
            ipv6: vec!["fd00::1".parse().expect("ip")],
        };
        let ips = pod_ips_value(&pod).expect("valid");
        assert_eq!((ips.n_v4, ips.n_v6), (2, 1));
        let addrs = pod_addrs(&ips);
        assert_eq!(addrs.ipv4, pod.ipv4);
        assert_eq!(addrs.ipv6, pod.ipv6);

        pod.ipv4 = (1..=5)
            .map(|i| std::net::Ipv4Addr::new(10, 0, 0, i))
            .collect();
        let err = pod_ips_value(&pod).expect_err("too many");
        assert!(
            matches!(
                err,
                EnrollError::TooManyIps {
                    count: 5,
                    max: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn permission_errors_name_the_capabilities() {
        let source = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        let err = program_error("load", "redir_connect4", source);
        assert!(matches!(err, LoadError::Permission { .. }), "{err}");
        assert!(err.to_string().contains(crate::CAPS_HINT), "{err}");

        let other = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert!(matches!(
            program_error("load", "redir_connect4", other),
            LoadError::Program { .. }
        ));
    }
}
