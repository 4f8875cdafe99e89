/// An errno a rejected connect returns, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// The errnos a connect can plausibly fail with; what applications handle.
const NAMES: &[(&str, i32)] = &[
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("EAGAIN", libc::EAGAIN),
    ("ECONNRESET", libc::ECONNRESET),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENOBUFS", libc::ENOBUFS),
];

impl Default for Errno {
    fn default() -> Self {
        Errno(libc::ECONNREFUSED)
    }
}

impl Errno {
    pub fn from_name(name: &str) -> Result<Self, String> {
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| Errno(v))
            .ok_or_else(|| {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown errno {name:?}; one of {}", known.join(", "))
            })
    }

    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, v)| *v == self.0)
            .map_or("?", |(n, _)| n)
    }
}
