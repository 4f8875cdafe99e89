//! The `match` strings of a destination: "ip", "ip:port", "cidr", "cidr:port", "host:port",
//! IPv6 in brackets when a port follows ("[::1]:443", "[fd00::/8]:443").

use std::net::{IpAddr, Ipv6Addr};

use resilience_common::Endpoint;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// As written in the file.
    pub text: String,
    pub kind: MatchKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    /// One address on one port.
    Exact(Endpoint),
    /// A prefix of the IPv6 (or IPv4-mapped) address space, on one port or any (`port` 0).
    /// `bits` counts IPv6 bits: an IPv4 /24 is 96 + 24.
    Cidr {
        addr: [u8; 16],
        bits: u32,
        port: u16,
    },
    /// A DNS name on one port, resolved by the daemon.
    Host { host: String, port: u16 },
}

impl Match {
    pub fn parse(text: &str) -> Result<Match, String> {
        let kind = parse_kind(text.trim())?;
        Ok(Match {
            text: text.to_string(),
            kind,
        })
    }
}

fn parse_kind(s: &str) -> Result<MatchKind, String> {
    if s.is_empty() {
        return Err("empty match".into());
    }
    // "[v6]" or "[v6]:port" or "[v6/len]:port"
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let port = match after {
            "" => 0,
            p => parse_port(
                s,
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':port' after ']'"))?,
            )?,
        };
        return addr_or_cidr(s, inside, port);
    }
    // Bare IPv6 (with or without a prefix length) has more than one ':'.
    if s.matches(':').count() > 1 {
        return addr_or_cidr(s, s, 0);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, parse_port(s, p)?),
        None => (s, 0),
    };
    let first = host.split('/').next().unwrap_or(host);
    if ip(first).is_some() {
        return addr_or_cidr(s, host, port);
    }
    if host.contains('/') {
        return Err(format!("{s:?}: {first:?} is not an IP address"));
    }
    validate_hostname(s, host)?;
    if port == 0 {
        return Err(format!("{s:?}: a DNS name needs a port (\"{host}:443\")"));
    }
    Ok(MatchKind::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_port(whole: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) => Err(format!(
            "{whole:?}: port 0 is not a port; leave the port out to match any"
        )),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{whole:?}: {p:?} is not a port (1-65535)")),
    }
}

fn addr_or_cidr(whole: &str, s: &str, port: u16) -> Result<MatchKind, String> {
    let (addr_text, len_text) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr =
        ip(addr_text).ok_or_else(|| format!("{whole:?}: {addr_text:?} is not an IP address"))?;
    let (addr, max, offset) = match ip {
        IpAddr::V4(v4) => (Endpoint::v4(v4.octets(), 0).addr, 32, 96),
        IpAddr::V6(v6) => (v6.octets(), 128, 0),
    };
    let len = match len_text {
        None => max,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "{whole:?}: prefix length {l:?} is not in 0..={max}"
                ))
            }
        },
    };
    let bits = offset + len;
    if mask(addr, bits) != addr {
        let net = mask(addr, bits);
        let shown = match ip {
            IpAddr::V4(_) => format!("{}.{}.{}.{}/{len}", net[12], net[13], net[14], net[15]),
            IpAddr::V6(_) => format!("{}/{len}", Ipv6Addr::from(net)),
        };
        return Err(format!(
            "{whole:?}: host bits are set; did you mean {shown}?"
        ));
    }
    if len == max && port != 0 {
        return Ok(MatchKind::Exact(Endpoint { addr, port, set: 0 }));
    }
    Ok(MatchKind::Cidr { addr, bits, port })
}

/// An IP address in any form an application's resolver takes: IPv6, dotted-quad IPv4, and
/// the other forms of inet_aton(3) (`127.1`, `127.000.000.001`, `0x7f.1`, `2130706433`), which
/// getaddrinfo accepts too. Without this, `127.1:80` would be taken for a DNS name.
pub fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok().or_else(|| inet_aton(s).map(IpAddr::V4))
}

/// inet_aton(3): one to four parts, each decimal, octal (leading 0) or hex (0x); the last
/// part fills the remaining bytes.
fn inet_aton(s: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 8 {
            return None;
        }
        let v = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        nums.push(v);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    Some(std::net::Ipv4Addr::from(v | last))
}

/// `addr` with every bit past the first `bits` cleared.
pub fn mask(mut addr: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let start = (i as u32) * 8;
        if start >= bits {
            *byte = 0;
        } else if start + 8 > bits {
            *byte &= 0xffu8 << (8 - (bits - start));
        }
    }
    addr
}

fn validate_hostname(whole: &str, host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{whole:?}: {host:?} is neither an IP address, a CIDR nor a DNS name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> MatchKind {
        Match::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).kind
    }

    #[test]
    fn exact_v4_and_v6() {
        assert_eq!(
            kind("127.0.0.2:80"),
            MatchKind::Exact(Endpoint::v4([127, 0, 0, 2], 80))
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(kind("[::1]:443"), MatchKind::Exact(Endpoint::v6(one, 443)));
        // A v4-mapped IPv6 address is the same key as the IPv4 one.
        assert_eq!(kind("[::ffff:127.0.0.2]:80"), kind("127.0.0.2:80"));
    }

    #[test]
    fn bare_ip_is_a_full_length_cidr_on_any_port() {
        let addr = Endpoint::v4([10, 1, 2, 3], 0).addr;
        assert_eq!(
            kind("10.1.2.3"),
            MatchKind::Cidr {
                addr,
                bits: 128,
                port: 0
            }
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(
            kind("::1"),
            MatchKind::Cidr {
                addr: one,
                bits: 128,
                port: 0
            }
        );
    }

    #[test]
    fn cidrs() {
        let addr = Endpoint::v4([10, 0, 0, 0], 0).addr;
        assert_eq!(
            kind("10.0.0.0/8"),
            MatchKind::Cidr {
                addr,
                bits: 104,
                port: 0
            }
        );
        assert_eq!(
            kind("10.0.0.0/8:443"),
            MatchKind::Cidr {
                addr,
                bits: 104,
                port: 443
            }
        );
        let mut fd = [0u8; 16];
        fd[0] = 0xfd;
        assert_eq!(
            kind("fd00::/8"),
            MatchKind::Cidr {
                addr: fd,
                bits: 8,
                port: 0
            }
        );
        assert_eq!(
            kind("[fd00::/8]:5432"),
            MatchKind::Cidr {
                addr: fd,
                bits: 8,
                port: 5432
            }
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            kind("API.example.com:443"),
            MatchKind::Host {
                host: "api.example.com".into(),
                port: 443
            }
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (s, want) in [
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.1:0", "port 0"),
            ("10.0.0.1:99999", "not a port"),
            ("api.example.com", "needs a port"),
            ("bad_host!:80", "neither"),
            ("[::1:443", "missing ']'"),
            ("", "empty"),
            ("300.1.1.1/8", "not an IP address"),
        ] {
            let e = Match::parse(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn every_inet_aton_form_is_an_address() {
        let lo = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "127.000.000.001",
            "0x7f.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
        ] {
            assert_eq!(ip(s), lo, "{s}");
        }
        for s in [
            "256.1.1.1",
            "1.2.3.4.5",
            "example",
            "0x",
            "1.2.3.256",
            "1.16777216",
        ] {
            assert_eq!(ip(s), None, "{s}");
        }
        assert_eq!(kind("127.1:80"), kind("127.0.0.1:80"));
        assert_eq!(
            ip("10.1"),
            Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)))
        );
    }

    #[test]
    fn mask_clears_host_bits() {
        let a = Endpoint::v4([10, 1, 2, 3], 0).addr;
        assert_eq!(mask(a, 96 + 8), Endpoint::v4([10, 0, 0, 0], 0).addr);
        assert_eq!(mask(a, 96 + 20), Endpoint::v4([10, 1, 0, 0], 0).addr);
        assert_eq!(mask(a, 128), a);
    }
}
