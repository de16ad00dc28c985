//! The parsing layer under every binary's typed configuration.
//!
//! Each binary keeps its own `Config`, its variable-name consts and its cross-field checks;
//! this module holds what they share: the [`Source`] the values come from (the process
//! environment in production, a `HashMap` in tests, so tests never mutate the process
//! environment), the [`Error`] naming the variable, the value and the reason, and the
//! helpers that read one variable ([`var`], [`var_trimmed`], [`string`], [`path`]) or
//! parse one value ([`parse_bool`], [`parse_u32`], [`socket_addr`], [`absolute_path`];
//! durations are [`crate::parse_duration`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where configuration values come from.
pub trait Source {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
    /// Every variable whose name starts with `prefix` (e.g. `ISTIO_META_`), sorted by name.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

fn sorted_with_prefix<'a>(
    vars: impl Iterator<Item = (&'a str, &'a str)>,
    prefix: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSource;

impl Source for EnvSource {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        // Non-UTF-8 variables cannot be configuration values anyway; skip them.
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        sorted_with_prefix(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())), prefix)
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        sorted_with_prefix(self.iter().map(|(k, v)| (k.as_str(), v.as_str())), prefix)
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| v.to_string())
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        sorted_with_prefix(self.iter().map(|(k, v)| (*k, *v)), prefix)
    }
}

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable has a value that does not parse.
    #[error("invalid value {value:?} for {var}: {reason}")]
    InvalidVar {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A required variable is missing.
    #[error("{var} is required{}", Condition(.why))]
    Missing {
        /// The variable.
        var: &'static str,
        /// When it is required, e.g. `with REGISTRY=files` (empty: always).
        why: &'static str,
    },
    /// A combination of variables is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Displays [`Error::Missing`]'s `why` after a space, or nothing when it is empty.
struct Condition<'a>(&'a str);

impl fmt::Display for Condition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " {}", self.0)
        }
    }
}

/// Reads `name` and parses its value as it is (not trimmed; an empty value is parsed too).
/// `Ok(None)` when unset; a parse failure becomes [`Error::InvalidVar`] naming the variable,
/// the value and the parser's reason.
pub fn var<T>(
    src: &dyn Source,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, Error> {
    src.get(name)
        .map(|value| parse_value(name, value, parse))
        .transpose()
}

/// Like [`var`], but a blank value counts as unset and the value is trimmed before it is
/// parsed (the error still shows the value as it was set).
pub fn var_trimmed<T>(
    src: &dyn Source,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, Error> {
    src.get(name)
        .filter(|value| !value.trim().is_empty())
        .map(|value| parse_value(name, value, |v| parse(v.trim())))
        .transpose()
}

fn parse_value<T>(
    name: &'static str,
    value: String,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, Error> {
    parse(&value).map_err(|reason| Error::InvalidVar {
        var: name,
        value,
        reason,
    })
}

/// The value of `name` unless it is unset or empty.
pub fn string(src: &dyn Source, name: &'static str) -> Option<String> {
    src.get(name).filter(|s| !s.is_empty())
}

/// The value of `name` as a path unless it is unset or empty (any path is accepted).
pub fn path(src: &dyn Source, name: &'static str) -> Option<PathBuf> {
    string(src, name).map(PathBuf::from)
}

/// A boolean: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`, in any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A `u32` in decimal or, with a `0x`/`0X` prefix, hexadecimal (socket marks are written
/// both ways); surrounding white space is ignored.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else {
        s.parse()
    };
    parsed.map_err(|e| e.to_string())
}

/// A socket address `<ip>:<port>` (IPv6 as `[ip]:port`); surrounding white space is
/// ignored. Host names are refused: a listener binds an address.
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("expected ip:port: {e}"))
}

/// An absolute path (a relative one would depend on the working directory).
pub fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err("expected an absolute path".into())
    }
}

/// Serializes a duration as seconds with an `s` suffix (`1.5s`), the form a config dump
/// shows; for `#[serde(serialize_with = "mesh_core::env::serialize_duration")]`.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}s", d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn map_sources_get_and_list_by_prefix() {
        let src = map(&[("META_B", "2"), ("META_A", "1"), ("OTHER", "x")]);
        assert_eq!(Source::get(&src, "OTHER").as_deref(), Some("x"));
        assert_eq!(Source::get(&src, "UNSET"), None);
        let want = vec![
            ("META_A".to_string(), "1".to_string()),
            ("META_B".to_string(), "2".to_string()),
        ];
        assert_eq!(src.vars_with_prefix("META_"), want);
        let owned: HashMap<String, String> = src
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(Source::get(&owned, "META_A").as_deref(), Some("1"));
        assert_eq!(owned.vars_with_prefix("META_"), want);
    }

    #[test]
    fn env_source_reads_the_process_environment() {
        // Read-only: PATH is set for every test process; nothing is mutated.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(EnvSource.get("PATH"), Some(path.clone()));
        assert!(
            EnvSource
                .vars_with_prefix("PAT")
                .contains(&("PATH".into(), path))
        );
        let listed = EnvSource.vars_with_prefix("");
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn var_parses_the_raw_value_and_names_var_value_and_reason() {
        let src = map(&[("N", "7"), ("BAD", "x"), ("EMPTY", ""), ("PADDED", " 7")]);
        let num = |s: &str| s.parse::<u8>().map_err(|e| e.to_string());
        assert_eq!(var(&src, "N", num).unwrap(), Some(7));
        assert_eq!(var(&src, "UNSET", num).unwrap(), None);
        let err = var(&src, "BAD", num).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value \"x\" for BAD: invalid digit found in string"
        );
        // Neither blank nor padded values are special.
        assert!(var(&src, "EMPTY", num).is_err());
        assert!(var(&src, "PADDED", num).is_err());
    }

    #[test]
    fn var_trimmed_skips_blank_values_and_trims() {
        let src = map(&[("PADDED", " 7 "), ("BLANK", "  "), ("BAD", " x ")]);
        let num = |s: &str| s.parse::<u8>().map_err(|e| e.to_string());
        assert_eq!(var_trimmed(&src, "PADDED", num).unwrap(), Some(7));
        assert_eq!(var_trimmed(&src, "BLANK", num).unwrap(), None);
        assert_eq!(var_trimmed(&src, "UNSET", num).unwrap(), None);
        let err = var_trimmed(&src, "BAD", num).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidVar { var: "BAD", value, .. } if value == " x "),
            "{err:?}"
        );
    }

    #[test]
    fn strings_and_paths_skip_empty_values() {
        let src = map(&[("S", "v"), ("E", ""), ("P", "rel/dir")]);
        assert_eq!(string(&src, "S").as_deref(), Some("v"));
        assert_eq!(string(&src, "E"), None);
        assert_eq!(string(&src, "UNSET"), None);
        assert_eq!(path(&src, "P"), Some(PathBuf::from("rel/dir")));
        assert_eq!(path(&src, "E"), None);
    }

    #[test]
    fn error_messages() {
        let missing = |why| {
            Error::Missing {
                var: "NODE_NAME",
                why,
            }
            .to_string()
        };
        assert_eq!(missing(""), "NODE_NAME is required");
        assert_eq!(
            missing("with REGISTRY=files"),
            "NODE_NAME is required with REGISTRY=files"
        );
        assert_eq!(
            Error::Invalid("A needs B".into()).to_string(),
            "invalid configuration: A needs B"
        );
    }

    #[test]
    fn bools() {
        for t in ["true", "TRUE", "1", "yes", "On"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["false", "False", "0", "no", "OFF"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "maybe", " true", "2"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn u32s_in_decimal_or_hex() {
        assert_eq!(parse_u32("1337"), Ok(1337));
        assert_eq!(parse_u32(" 0x539 "), Ok(0x539));
        assert_eq!(parse_u32("0XFF"), Ok(255));
        for bad in ["", "0x", "0xzz", "-1", "4294967296", "many"] {
            assert!(parse_u32(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(
            socket_addr(" 0.0.0.0:8000 "),
            Ok(([0, 0, 0, 0], 8000).into())
        );
        assert_eq!(socket_addr("[::1]:15012").map(|a| a.port()), Ok(15012));
        for bad in ["8000", "localhost:80", "1.2.3.4", ""] {
            let err = socket_addr(bad).unwrap_err();
            assert!(err.starts_with("expected ip:port: "), "{bad}: {err}");
        }
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            absolute_path("/run/x.sock"),
            Ok(PathBuf::from("/run/x.sock"))
        );
        for bad in ["", "x.sock", "./x", "~/x"] {
            assert_eq!(
                absolute_path(bad),
                Err("expected an absolute path".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_serialize_as_seconds() {
        #[derive(serde::Serialize)]
        struct S {
            #[serde(serialize_with = "serialize_duration")]
            d: Duration,
        }
        let json = |d| serde_json::to_string(&S { d }).unwrap();
        assert_eq!(json(Duration::from_millis(1500)), r#"{"d":"1.5s"}"#);
        assert_eq!(json(Duration::from_secs(300)), r#"{"d":"300s"}"#);
    }
}
