//! `allowed_outbound_hosts`: the hosts a flow may call over HTTP, in Spin's
//! form — `scheme://host[:port]`, where the host may start with `*.` to
//! take every subdomain. A full URL grants its scheme, host and port (the
//! path is ignored); an entry that is empty once its properties are
//! substituted grants nothing (the validation skips it). Parsed once at load; the `http` capability asks
//! [`AllowedHost::allows`] for every request and every redirect hop.

use std::fmt;
use std::net::IpAddr;

/// The longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

/// A URL scheme outbound requests may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The port a URL without one means.
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// One host name, lower case.
    Name(String),
    /// An IP address written as one (`127.0.0.1`, `[::1]`).
    Address(IpAddr),
    /// `*.example.org`: any name ending in `.example.org` (lower case,
    /// with the dot), not `example.org` itself.
    Subdomains(String),
}

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedHost {
    pub(crate) scheme: Scheme,
    pub(crate) host: HostPattern,
    /// The scheme's default port when the grant names none.
    pub(crate) port: u16,
}

/// Where a request goes: what a grant is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) scheme: Scheme,
    /// Lower case; an IPv6 address without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Destination {
    /// As a grant that allows exactly this destination is written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        };
        write!(f, "{}://{host}", self.scheme.as_str())?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl AllowedHost {
    /// Parse `scheme://host[:port]`. The error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` has no scheme"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| format!("`{text}`: the scheme `{scheme}` is not http or https"))?;
        // A path, query or fragment is ignored: `http://127.0.0.1:8080/check`
        // grants `http://127.0.0.1:8080`, so a grant may be the very URL the
        // flow calls (from the same property).
        let authority = match rest.find(['/', '?', '#']) {
            Some(end) => &rest[..end],
            None => rest,
        };
        if authority.contains('@') {
            return Err(format!(
                "`{text}` names a user; a grant has a scheme, a host and a port only"
            ));
        }
        let (host, port) =
            split_port(authority).map_err(|problem| format!("`{text}`: {problem}"))?;
        let port = match port {
            Some(port) => port,
            None => scheme.default_port(),
        };
        let host = parse_host(host).map_err(|problem| format!("`{text}`: {problem}"))?;
        Ok(Self { scheme, host, port })
    }

    /// Whether this grant lets a request go to `to`.
    pub(crate) fn allows(&self, to: &Destination) -> bool {
        if self.scheme != to.scheme || self.port != to.port {
            return false;
        }
        match &self.host {
            HostPattern::Name(name) => *name == to.host,
            HostPattern::Address(address) => to.host.parse::<IpAddr>().ok() == Some(*address),
            HostPattern::Subdomains(suffix) => {
                to.host.len() > suffix.len()
                    && to.host.ends_with(suffix.as_str())
                    && to.host.parse::<IpAddr>().is_err()
            }
        }
    }

    /// Whether this grant names `address`, or `localhost`, explicitly: what
    /// lets a request reach a loopback, private or metadata address.
    pub(crate) fn names_address(&self, address: IpAddr) -> bool {
        match &self.host {
            HostPattern::Address(named) => *named == address,
            HostPattern::Name(name) => name == "localhost",
            HostPattern::Subdomains(_) => false,
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or("an IPv6 address opened with `[` is not closed")?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after `]`")?),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("the port `{port}` is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host, port))
}

fn parse_host(host: &str) -> Result<HostPattern, String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse()
            .map(HostPattern::Address)
            .map_err(|_| format!("`{v6}` is not an IPv6 address"));
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Address(address));
    }
    let host = host.to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host.as_str()),
    };
    if name.is_empty() || name.contains('*') {
        return Err(
            "a host is a name, an IP address, or `*.` and a name (all its subdomains); \
             a wildcard stands only at the start"
                .to_owned(),
        );
    }
    if name.len() > MAX_HOST_LEN || !name.split('.').all(is_label) {
        return Err(format!("`{name}` is not a host name"));
    }
    Ok(if wildcard {
        HostPattern::Subdomains(format!(".{name}"))
    } else {
        HostPattern::Name(name.to_owned())
    })
}

/// A DNS label: letters, digits and `-`, not at either end; 1 to 63 bytes.
fn is_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(scheme: Scheme, host: &str, port: u16) -> Destination {
        Destination {
            scheme,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn grants_match_scheme_host_and_port() {
        let api = AllowedHost::parse("https://api.example.com").unwrap();
        assert!(api.allows(&to(Scheme::Https, "api.example.com", 443)));
        assert!(!api.allows(&to(Scheme::Http, "api.example.com", 443)));
        assert!(!api.allows(&to(Scheme::Https, "api.example.com", 8443)));
        assert!(!api.allows(&to(Scheme::Https, "evil.api.example.com", 443)));

        let local = AllowedHost::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.allows(&to(Scheme::Http, "127.0.0.1", 8080)));
        assert!(!local.allows(&to(Scheme::Http, "127.0.0.1", 80)));
        assert!(local.names_address("127.0.0.1".parse().unwrap()));
        assert!(!local.names_address("127.0.0.2".parse().unwrap()));

        let wild = AllowedHost::parse("https://*.Example.org").unwrap();
        assert!(wild.allows(&to(Scheme::Https, "a.example.org", 443)));
        assert!(wild.allows(&to(Scheme::Https, "a.b.example.org", 443)));
        assert!(!wild.allows(&to(Scheme::Https, "example.org", 443)));
        assert!(!wild.allows(&to(Scheme::Https, "badexample.org", 443)));
        assert!(!wild.names_address("10.0.0.1".parse().unwrap()));

        let v6 = AllowedHost::parse("http://[::1]:9000").unwrap();
        assert!(v6.allows(&to(Scheme::Http, "::1", 9000)));
        assert_eq!(
            to(Scheme::Http, "::1", 9000).to_string(),
            "http://[::1]:9000"
        );
        assert_eq!(
            to(Scheme::Https, "api.example.com", 443).to_string(),
            "https://api.example.com"
        );
    }

    #[test]
    fn a_grant_with_a_path_grants_its_scheme_host_and_port_only() {
        for text in [
            "http://127.0.0.1:8080/check",
            "http://127.0.0.1:8080/check?strict=1#top",
            "http://127.0.0.1:8080?strict=1",
        ] {
            let grant = AllowedHost::parse(text).unwrap();
            assert_eq!(grant, AllowedHost::parse("http://127.0.0.1:8080").unwrap());
        }
        let grant = AllowedHost::parse("https://api.example.com/v1/").unwrap();
        assert!(grant.allows(&to(Scheme::Https, "api.example.com", 443)));
        assert!(!grant.allows(&to(Scheme::Https, "api.example.com", 8443)));
        assert!(!grant.allows(&to(Scheme::Http, "api.example.com", 80)));
    }

    #[test]
    fn bad_grants_say_what_is_wrong() {
        for (text, says) in [
            ("api.example.com", "no scheme"),
            ("ftp://example.com", "not http or https"),
            ("https://example.com:8080@evil.example.com/path", "a user"),
            ("https://user@example.com", "a user"),
            ("https://example.com:0", "not a number"),
            ("https://example.com:99999", "not a number"),
            ("https://*", "a wildcard"),
            ("https://a.*.example.com", "a wildcard"),
            ("https://exa mple.com", "not a host name"),
            ("https://[::1", "not closed"),
            ("https://[zz]:80", "not an IPv6 address"),
        ] {
            let error = AllowedHost::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
