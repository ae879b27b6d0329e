//! SSH jump hosts (`jump_hosts`, per infrastructure or per node): the chain of hosts an SSH
//! connection to a node goes through, first hop first. A hop is `host`, `host:port` or
//! `{host, port, credentials}`; without `credentials` a hop logs in with the command's.

use serde::{Deserialize, Serialize};

use super::check::{field, integer, non_empty_string, string, warn_unknown_keys};
use crate::diagnostic::{index, join, Collector};
use crate::yaml::{Value, Yaml};

/// One hop of a jump host chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JumpHost {
    /// The host name or address, as the previous hop (or this machine) resolves it.
    pub host: String,
    /// The SSH port.
    pub port: u16,
    /// The plan credential to log in with; the command's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// `host:port`, or `[host]:port` for an IPv6 address, as OpenSSH writes them.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl JumpHost {
    /// `host:port`, for messages and as the name its host key is recorded under.
    pub fn label(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// Reads `jump_hosts`: a list of hops (an empty list means "connect directly").
pub(crate) fn parse(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    credential_names: &[&str],
) -> Option<Vec<JumpHost>> {
    let Value::Seq(items) = &v.value else {
        c.error(
            v,
            path,
            format!(
                "'jump_hosts' must be a list of hops (`host`, `host:port` or {{host, port, credentials}}), not {}",
                v.describe()
            ),
        );
        return None;
    };
    let errors = c.error_count();
    let hops: Vec<JumpHost> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| parse_hop(c, item, &index(path, i), credential_names))
        .collect();
    (c.error_count() == errors).then_some(hops)
}

fn parse_hop(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    credential_names: &[&str],
) -> Option<JumpHost> {
    match &v.value {
        Value::Str(s) => parse_short(s).or_else(|| {
            c.error(
                v,
                path,
                format!("the jump host '{s}' is not `host` or `host:port` (port 1 to 65535)"),
            );
            None
        }),
        Value::Map(_) => {
            warn_unknown_keys(c, v, path, &["host", "port", "credentials"]);
            let host = match field(v, "host") {
                Some(h) => non_empty_string(c, h, &join(path, "host"), "the jump host's 'host'"),
                None => {
                    c.error(v, &join(path, "host"), "a jump host needs a 'host'");
                    None
                }
            };
            let port = match field(v, "port") {
                Some(p) => {
                    let pp = join(path, "port");
                    integer(c, p, &pp, "the jump host's 'port'").and_then(|n| {
                        let port = u16::try_from(n).ok().filter(|p| *p > 0);
                        if port.is_none() {
                            c.error(p, &pp, format!("the port {n} is not from 1 to 65535"));
                        }
                        port
                    })
                }
                None => Some(22),
            };
            let credentials = match field(v, "credentials") {
                Some(cr) => {
                    let cp = join(path, "credentials");
                    let name = string(c, cr, &cp, "the jump host's 'credentials'")?;
                    if !credential_names.contains(&name.as_str()) {
                        c.error(
                            cr,
                            &cp,
                            format!("no credential '{name}' is defined in 'credentials'"),
                        );
                        return None;
                    }
                    Some(name)
                }
                None => None,
            };
            Some(JumpHost {
                host: host?,
                port: port?,
                credentials,
            })
        }
        _ => {
            c.error(
                v,
                path,
                format!(
                    "a jump host is `host`, `host:port` or {{host, port, credentials}}, not {}",
                    v.describe()
                ),
            );
            None
        }
    }
}

/// `host`, `host:port` or `[v6]:port`.
fn parse_short(s: &str) -> Option<JumpHost> {
    let hop = |host: &str, port: u16| {
        (!host.is_empty() && !host.chars().any(char::is_whitespace)).then(|| JumpHost {
            host: host.to_string(),
            port,
            credentials: None,
        })
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return hop(host, port.parse().ok().filter(|p| *p > 0)?);
    }
    match s.split_once(':') {
        Some((host, port)) if !port.contains(':') => {
            hop(host, port.parse().ok().filter(|p| *p > 0)?)
        }
        // A bare IPv6 address.
        Some(_) => hop(s, 22),
        None => hop(s, 22),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_short;

    #[test]
    fn short_forms() {
        let h = parse_short("bastion").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("bastion", 22));
        let h = parse_short("10.0.0.1:2222").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("10.0.0.1", 2222));
        let h = parse_short("[fd00::1]:2200").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.label().as_str()),
            ("fd00::1", 2200, "[fd00::1]:2200")
        );
        assert_eq!(parse_short("fd00::1").unwrap().port, 22);
        assert!(parse_short("bastion:0").is_none());
        assert!(parse_short("bastion:x").is_none());
        assert!(parse_short("").is_none());
    }
}
