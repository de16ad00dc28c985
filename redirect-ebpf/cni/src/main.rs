//! `mesh-cni`: with `CNI_COMMAND` set, the chained CNI plugin; otherwise
//! `mesh-cni install|uninstall …` (chaining into the node's CNI configuration).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_cni::chain::{self, InstallOptions};
use mesh_cni::conf::{env, parse_env};
use mesh_cni::event::DEFAULT_AGENT_SOCKET;
use mesh_cni::plugin::{self, CNI_VERSION, CniError};

fn main() -> ExitCode {
    if std::env::var_os(env::CNI_COMMAND).is_some() {
        return cni_main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cni_main() -> ExitCode {
    let mut stdin = Vec::new();
    let result = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::decode(format!("reading stdin: {e}")))
        .and_then(|_| parse_env(|k| std::env::var(k).ok()))
        .and_then(|env| plugin::run(&env, &stdin));
    // Errors are reported in the configuration's version when it is readable.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .unwrap_or_else(|| CNI_VERSION.to_string());
    let (out, code) = match result {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("mesh-cni: {e}");
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{v}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    code
}

const USAGE: &str = "usage: mesh-cni install --cni-conf-dir DIR --cni-bin-dir DIR [--agent-socket PATH]\n       mesh-cni uninstall --cni-conf-dir DIR --cni-bin-dir DIR\n       (with CNI_COMMAND set: the CNI plugin)";

fn cli_main(args: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    let mut conf_dir = None;
    let mut bin_dir = None;
    let mut agent_socket = PathBuf::from(DEFAULT_AGENT_SOCKET);
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--cni-conf-dir" => conf_dir = Some(value),
            "--cni-bin-dir" => bin_dir = Some(value),
            "--agent-socket" if sub == "install" => agent_socket = value,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let (Some(conf_dir), Some(bin_dir)) = (conf_dir, bin_dir) else {
        return Err(format!(
            "--cni-conf-dir and --cni-bin-dir are required\n{USAGE}"
        ));
    };
    match sub.as_str() {
        "install" => {
            let plugin_binary =
                std::env::current_exe().map_err(|e| format!("locating mesh-cni itself: {e}"))?;
            chain::install(&InstallOptions {
                conf_dir,
                bin_dir,
                agent_socket,
                plugin_binary,
            })
            .map_err(|e| format!("install: {e}"))
        }
        "uninstall" => chain::uninstall(&conf_dir, &bin_dir).map_err(|e| format!("uninstall: {e}")),
        other => Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    }
}
