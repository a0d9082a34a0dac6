//! A `database.url` that names several hosts, as libpq allows
//! (`postgres://user:pw@h1:5432,h2:5433/db?target_session_attrs=read-write`),
//! taken apart: one set of connect options per host (pure; `db::hosts`
//! finds the one to connect to).
//!
//! Ours because sqlx (0.9.1) does not do it: its URL parser rejects the
//! host list (`invalid port number`), `PgConnectOptions` holds one host, and
//! `target_session_attrs` is ignored with a warning, so a URL naming a
//! standby connects to it and every write fails (SQLSTATE 25006).
//! Upstream: <https://github.com/transact-rs/sqlx/issues/179>,
//! <https://github.com/transact-rs/sqlx/issues/2290>.
//!
//! The URL is split here, each host gets a single-host rewrite of the URL
//! that sqlx parses (user, password, database and other parameters kept),
//! and `target_session_attrs` is read here and removed before sqlx sees it.

use sqlx::postgres::PgConnectOptions;

use session_guard_amqp::url::redact_url;

/// Which server of the list will do (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The first that accepts a connection (`any`).
    Any,
    /// The first that takes writes: not in recovery, transactions not
    /// read-only by default (`read-write` or `primary`).
    ReadWrite,
}

/// A `database.url` taken apart: one set of options per host, in the URL's
/// order, and which of them will do.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// One per host listed, each a complete set of connect options.
    pub options: Vec<PgConnectOptions>,
    /// `host:port` of each, for messages.
    pub names: Vec<String>,
    /// The one-host URL of each (without `target_session_attrs`), for
    /// what takes a URL rather than options (creating the database).
    pub urls: Vec<String>,
    /// Which server will do.
    pub target: Target,
}

impl Hosts {
    /// Parses `url`. Without `target_session_attrs`, one host means
    /// [`Target::Any`] (as before: no check of the server) and several mean
    /// [`Target::ReadWrite`]: the worker writes in every batch, so a list of
    /// hosts is a list to find the primary in (libpq's default would be
    /// `any`, which would land on whichever server answers first).
    pub fn parse(url: &str) -> Result<Self, String> {
        let parts = split(url)?;
        let (query, explicit) = take_target(parts.query)?;
        let target = explicit.unwrap_or(if parts.hosts.len() > 1 {
            Target::ReadWrite
        } else {
            Target::Any
        });
        let mut options = Vec::with_capacity(parts.hosts.len());
        let mut names = Vec::with_capacity(parts.hosts.len());
        let mut urls = Vec::with_capacity(parts.hosts.len());
        for host in &parts.hosts {
            let single = format!(
                "{}{}{}{}{}",
                parts.prefix, host, parts.path, query, parts.fragment
            );
            let parsed: PgConnectOptions = single
                .parse()
                .map_err(|e: sqlx::Error| e.to_string().replace(&single, &redact_url(&single)))?;
            names.push(format!("{}:{}", parsed.get_host(), parsed.get_port()));
            options.push(parsed);
            urls.push(single);
        }
        Ok(Hosts {
            options,
            names,
            urls,
            target,
        })
    }

    /// Whether this is today's one-host URL without a check of the server.
    pub fn is_plain(&self) -> bool {
        self.options.len() == 1 && self.target == Target::Any
    }
}

/// A URL's pieces around its host list.
struct Parts<'a> {
    /// `scheme://` and `userinfo@`, if any.
    prefix: &'a str,
    /// Each `host[:port]` of the list, as written (IPv6 in brackets).
    hosts: Vec<&'a str>,
    /// `/db`, or empty.
    path: &'a str,
    /// `?...` without the fragment, or empty.
    query: &'a str,
    /// `#...`, or empty.
    fragment: &'a str,
}

/// Splits `url`'s authority into its hosts.
fn split(url: &str) -> Result<Parts<'_>, String> {
    let Some(after) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|s| url.strip_prefix(s).map(|rest| (s.len(), rest)))
    else {
        return Err("it must start with postgres:// or postgresql://".to_owned());
    };
    let (scheme_len, rest) = after;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_list = &authority[host_start..];
    let prefix = &url[..scheme_len + host_start];
    let tail = &rest[end..];
    let (before_fragment, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let (path, query) =
        before_fragment.split_at(before_fragment.find('?').unwrap_or(before_fragment.len()));
    let hosts: Vec<&str> = host_list.split(',').collect();
    if hosts.len() > 1 {
        for host in &hosts {
            check_host(host)?;
        }
    }
    Ok(Parts {
        prefix,
        hosts,
        path,
        query,
        fragment,
    })
}

/// Rejects an empty host or a bad port in a list (sqlx checks a lone host).
fn check_host(host: &str) -> Result<(), String> {
    let port = if let Some(v6) = host.strip_prefix('[') {
        let Some((_, after)) = v6.split_once(']') else {
            return Err(format!(
                "host {host:?}: an IPv6 address needs its closing ]"
            ));
        };
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("host {host:?}: expected :port after ]"));
        }
        after.strip_prefix(':')
    } else {
        if host.is_empty() {
            return Err("an empty host in the host list".to_owned());
        }
        host.split_once(':').map(|(_, port)| port)
    };
    match port {
        Some(port) if port.parse::<u16>().is_err() || port.parse::<u16>() == Ok(0) => {
            Err(format!("host {host:?}: invalid port number"))
        }
        _ => Ok(()),
    }
}

/// `query` without `target_session_attrs`, and the target it names.
fn take_target(query: &str) -> Result<(String, Option<Target>), String> {
    let Some(pairs) = query.strip_prefix('?') else {
        return Ok((String::new(), None));
    };
    let mut target = None;
    let mut kept = Vec::new();
    for pair in pairs.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "target_session_attrs" {
            target = Some(match value {
                "any" => Target::Any,
                "read-write" | "primary" => Target::ReadWrite,
                other => {
                    return Err(format!(
                        "target_session_attrs={other} is not supported (allowed: any, \
                         read-write, primary)"
                    ));
                }
            });
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok((query, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Hosts {
        Hosts::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn one_host_is_plain() {
        let h = hosts("postgres://u:pw@db.internal:6543/sg?sslmode=prefer");
        assert!(h.is_plain());
        assert_eq!(h.names, ["db.internal:6543"]);
        assert_eq!(h.options[0].get_database(), Some("sg"));
        assert_eq!(h.options[0].get_username(), "u");
    }

    #[test]
    fn several_hosts_each_with_the_rest_of_the_url() {
        let h =
            hosts("postgresql://u:p%40w@h1:5433,h2:5434,h3/sg?sslmode=disable&application_name=x");
        assert_eq!(h.names, ["h1:5433", "h2:5434", "h3:5432"]);
        assert_eq!(h.target, Target::ReadWrite);
        assert!(!h.is_plain());
        for o in &h.options {
            assert_eq!(o.get_database(), Some("sg"));
            assert_eq!(o.get_username(), "u");
            assert_eq!(o.get_application_name(), Some("x"));
        }
    }

    #[test]
    fn hosts_without_ports_take_the_port_parameter() {
        let h = hosts("postgres://u@a,b/sg?port=7000");
        assert_eq!(h.names, ["a:7000", "b:7000"]);
    }

    #[test]
    fn ipv6_in_brackets() {
        let h = hosts("postgres://u@[::1]:5433,[fe80::2],127.0.0.1:5434/sg");
        assert_eq!(h.options.len(), 3);
        assert_eq!(h.options[0].get_port(), 5433);
        assert!(h.options[0].get_host().contains("::1"));
        assert_eq!(h.options[1].get_port(), 5432);
        assert_eq!(h.names[2], "127.0.0.1:5434");
    }

    #[test]
    fn target_session_attrs_is_read_and_removed() {
        for (query, target) in [
            ("?target_session_attrs=read-write", Target::ReadWrite),
            ("?target_session_attrs=primary", Target::ReadWrite),
            ("?sslmode=prefer&target_session_attrs=any", Target::Any),
        ] {
            let h = hosts(&format!("postgres://u@h1:1,h2:2/sg{query}"));
            assert_eq!(h.target, target, "{query}");
        }
        let h = hosts("postgres://u@h1/sg?target_session_attrs=read-write");
        assert_eq!(h.target, Target::ReadWrite);
        assert!(!h.is_plain());
        let (query, _) = take_target("?a=1&target_session_attrs=any&b=2").unwrap();
        assert_eq!(query, "?a=1&b=2");
        let (query, _) = take_target("?target_session_attrs=any").unwrap();
        assert_eq!(query, "");
    }

    #[test]
    fn errors() {
        for (url, wanted) in [
            ("mysql://h1,h2/db", "must start with postgres://"),
            ("postgres://u@h1,,h2/db", "empty host"),
            ("postgres://u@h1:5432,/db", "empty host"),
            ("postgres://u@h1:x,h2/db", "invalid port"),
            ("postgres://u@h1:70000,h2/db", "invalid port"),
            ("postgres://u@[::1,h2/db", "closing ]"),
            (
                "postgres://u@h1,h2/db?target_session_attrs=standby",
                "not supported",
            ),
        ] {
            let e = Hosts::parse(url).expect_err(url);
            assert!(e.contains(wanted), "{url}: {e}");
        }
    }

    #[test]
    fn a_password_is_not_in_an_error() {
        let e = Hosts::parse("postgres://u:secret@h1:99999/db").expect_err("bad port");
        assert!(!e.contains("secret"), "{e}");
    }
}
