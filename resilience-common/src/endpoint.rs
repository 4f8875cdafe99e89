//! Destination addresses as the kernel programs key them.

/// One destination socket address. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so a connect4
/// to 10.0.0.1 and a connect6 to `::ffff:10.0.0.1` find the same entries.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address bytes in network order.
    pub addr: [u8; 16],
    /// Port in host order; 0 means "any port" in policy keys.
    pub port: u16,
    /// The policy set an EXACT key belongs to (0 or 1, see `Control::active_set`); 0 in every
    /// other use (tracking, records, observed keys).
    pub set: u16,
}

impl Endpoint {
    /// `ip` holds the four address bytes in network order.
    #[inline(always)]
    pub const fn v4(ip: [u8; 4], port: u16) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = ip[0];
        addr[13] = ip[1];
        addr[14] = ip[2];
        addr[15] = ip[3];
        Self { addr, port, set: 0 }
    }

    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, set: 0 }
    }

    /// The same address as a key of policy set `set`.
    #[inline(always)]
    pub const fn in_set(self, set: u16) -> Self {
        Self {
            addr: self.addr,
            port: self.port,
            set,
        }
    }
}

/// The data part of a CIDR key in the LPM trie. The policy set comes first, then the port, so
/// that one trie serves both sets and both "CIDR on one port" (prefix covers set, port, then
/// the address bits) and "CIDR on any port" (stored with port 0, looked up a second time with
/// port 0).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CidrData {
    pub set: u8,
    /// Port in network order (the trie matches bits from the first byte on).
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of the set and the port in a CIDR key's prefix.
pub const CIDR_HEAD_BITS: u32 = 8 + 16;

impl CidrData {
    #[inline(always)]
    pub const fn new(set: u8, addr: [u8; 16], port: u16) -> Self {
        Self {
            set,
            port: port.to_be_bytes(),
            addr,
        }
    }

    /// The prefix length of a key for `addr_bits` bits of the (IPv6 or IPv4-mapped) address.
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        CIDR_HEAD_BITS + addr_bits
    }
}
