//! Running commands inside a pod's network namespace (`nsenter --net=<path>`, never
//! `ip netns exec`, which remounts /sys), and reading addresses.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A command run in a netns failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The command could not be started.
    #[error("running {cmd} in netns {netns}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The netns.
        netns: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The command exited with an error.
    #[error("{cmd} in netns {netns} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// The netns.
        netns: PathBuf,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Its output did not parse.
    #[error("{cmd} in netns {netns}: unexpected output: {reason}")]
    Output {
        /// The command line.
        cmd: String,
        /// The netns.
        netns: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Runs `program args…` inside `netns` (`None`: the agent's own), feeding `stdin`; returns
/// stdout.
pub fn run(
    netns: Option<&Path>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NetnsError> {
    let cmd_line = format!("{program} {}", args.join(" "));
    let ns_display = netns.map_or_else(|| PathBuf::from("(agent)"), Path::to_path_buf);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |source| NetnsError::Spawn {
        cmd: cmd_line.clone(),
        netns: ns_display.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            cmd: cmd_line,
            netns: ns_display,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The global-scope addresses of every non-loopback interface in `netns` (`ip -j addr`).
pub fn addresses(netns: Option<&Path>) -> Result<Vec<IpAddr>, NetnsError> {
    let out = run(netns, "ip", &["-j", "addr", "show"], None)?;
    parse_ip_addr_json(&out).map_err(|reason| NetnsError::Output {
        cmd: "ip -j addr show".into(),
        netns: netns.map_or_else(|| PathBuf::from("(agent)"), Path::to_path_buf),
        reason,
    })
}

fn parse_ip_addr_json(out: &str) -> Result<Vec<IpAddr>, String> {
    let links: serde_json::Value = serde_json::from_str(out).map_err(|e| e.to_string())?;
    let mut ips = Vec::new();
    for link in links.as_array().ok_or("not a JSON array")? {
        if link.get("ifname").and_then(|v| v.as_str()) == Some("lo") {
            continue;
        }
        let Some(infos) = link.get("addr_info").and_then(|v| v.as_array()) else {
            continue;
        };
        for info in infos {
            if info.get("scope").and_then(|v| v.as_str()) != Some("global") {
                continue;
            }
            if let Some(ip) = info
                .get("local")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
            {
                ips.push(ip);
            }
        }
    }
    Ok(ips)
}

/// Parses CNI addresses (`10.0.1.2/24` or bare) into IPs; bad entries are skipped.
pub fn parse_cidr_ips(ips: &[String]) -> Vec<IpAddr> {
    ips.iter()
        .filter_map(|s| s.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let out = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","scope":"host"}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.1.2","scope":"global"},
                {"family":"inet6","local":"fe80::1","scope":"link"},
                {"family":"inet6","local":"fd00::2","scope":"global"}]}]"#;
        let ips = parse_ip_addr_json(out).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.0.1.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert!(parse_ip_addr_json("{}").is_err());
        assert_eq!(
            parse_cidr_ips(&["10.0.0.1/24".into(), "fd00::1".into(), "junk".into()]),
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }
}
